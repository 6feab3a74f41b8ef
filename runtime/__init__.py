"""iotrt: a lightweight runtime for IoT devices that see and act."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Node", "__version__"]

if TYPE_CHECKING:
    from iotrt.node import Node


def __getattr__(name: str) -> Any:
    # `from iotrt import Node` without importing NNG and numpy for `iotrt --help`
    if name == "Node":
        from iotrt.node import Node

        return Node
    raise AttributeError(f"module 'iotrt' has no attribute {name!r}")
