"""The client side of a running supervisor's control socket (`iotrt ps/topics/down/reload`).

The supervisor answers on a Rep0 socket `ctl` in the graph's runtime folder (private to the
service user). A request is a msgpack map `{"cmd": "ps" | "topics" | "stop" | "reload", ...}`;
the reply is a map with `"ok"` and, when not ok, `"error"`. The supervisor side is in
`iotrt.supervisor` (`Supervisor._control_handlers`).

Which graph: a graph file (its runtime folder is computed exactly as `iotrt up` does), a graph
name (looked up in the usual runtime roots), or nothing when exactly one graph is running.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import pynng

from iotrt.bus import recv_bytes
from iotrt.codec import DecodeError, pack, unpack
from iotrt.graph import default_runtime_root, load_graph

CONTROL_NAME = "ctl"


class ControlError(RuntimeError):
    """No supervisor answers, or it refused the request."""


def runtime_roots(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where running graphs may be: ours first, then the system service's."""
    candidates = [default_runtime_root(environ), Path("/run/iotrt")]
    if environ.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(environ["XDG_RUNTIME_DIR"]) / "iotrt")
    candidates.append(Path(f"/tmp/iotrt-{os.getuid()}"))
    out: list[Path] = []
    for c in candidates:
        if c not in out:
            out.append(c)
    return out


def running_graphs(environ: Mapping[str, str] = os.environ) -> dict[str, Path]:
    """graph name -> its control socket path, for every control socket we can see."""
    found: dict[str, Path] = {}
    for root in runtime_roots(environ):
        try:
            entries = sorted(root.iterdir())
        except OSError:       # missing, or another user's private folder
            continue
        for d in entries:
            ctl = d / CONTROL_NAME
            if d.name not in found and ctl.exists():
                found[d.name] = ctl
    return found


def control_address(graph: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The control address for a graph file, a graph name, or the only running graph."""
    if graph and (graph.endswith((".yaml", ".yml")) or Path(graph).is_file()):
        return load_graph(graph, environ=environ).control_address
    found = running_graphs(environ)
    where = ", ".join(str(r) for r in runtime_roots(environ))
    if graph:
        if graph not in found:
            known = f" (running: {', '.join(found)})" if found else ""
            raise ControlError(f"no running graph named '{graph}' in {where}{known}")
        return f"ipc://{found[graph]}"
    if not found:
        raise ControlError(f"no running graph found in {where}; start one with 'iotrt up GRAPH'")
    if len(found) > 1:
        raise ControlError(f"several graphs are running ({', '.join(found)}); name one")
    return f"ipc://{next(iter(found.values()))}"


def call(address: str, cmd: str, timeout_s: float = 3.0, **fields: Any) -> dict:
    """Send one request to the supervisor at `address`; return its reply, or raise
    ControlError when nobody answers or the reply is not ok."""
    with pynng.Req0(recv_timeout=int(timeout_s * 1000), send_timeout=int(timeout_s * 1000)) as sock:
        try:
            sock.dial(address, block=True)
        except pynng.NNGException as exc:
            raise ControlError(f"no supervisor answers at {address} ({exc}); is the graph running?") from exc
        try:
            sock.send(pack({"cmd": cmd, **fields}))
            reply = unpack(recv_bytes(sock))
        except pynng.Timeout as exc:
            raise ControlError(f"the supervisor at {address} did not answer within {timeout_s:g}s") from exc
        except DecodeError as exc:
            raise ControlError(f"unreadable reply from {address}: {exc}") from exc
    if not isinstance(reply, dict):
        raise ControlError(f"unreadable reply from {address}: {reply!r:.80}")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "the supervisor refused the request")))
    return reply
