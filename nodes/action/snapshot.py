"""Snapshot actuator: on command, save the latest camera frame as a JPEG in the state directory.

The door's visitor rule sends `{reason: visitor}` here; the node keeps only the newest frame
(its `image` input is latest-wins), writes `<dir>/<UTC time>-<reason>.jpg` atomically, keeps at
most `keep` files (oldest deleted first) and journals `command_applied` with the file's path, so
`iotrt events` lists every snapshot next to the rule that asked for it.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from iotrt.lazy import numpy as np
from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.action.actuator import CommandRefused, DriverError, handle_command

SPEC = NodeSpec(
    doc="save the latest camera frame as a JPEG when commanded (e.g. for a visitor)",
    inputs={"image": "RGB uint8 frame (H, W, 3)"},
    commands_in={"commands": "{reason: str} (optional; goes into the file name)"},
    params=[
        Param("dir", str, "", "where snapshots go (default: <state dir>/snapshots)"),
        Param("keep", int, 100, "keep at most this many snapshots; the oldest go first", min=1),
        Param("quality", int, 90, "JPEG quality", min=10, max=100),
        Param("max_age_s", float, 2.0, "refuse when the newest frame is older than this "
                                       "(the camera stalled)", min=0.01),
    ],
)

_REASON_RE = re.compile(r"[^A-Za-z0-9_-]+")


class Snapshots:
    """The controller: holds the newest frame and writes it out on `apply`."""

    def __init__(self, folder: Path, keep: int, quality: int, max_age_s: float) -> None:
        import cv2  # at the node's start, not at the first snapshot; reading SPEC needs none of it

        self.cv2 = cv2
        self.folder, self.keep, self.quality, self.max_age_s = folder, keep, quality, max_age_s
        self.frame: np.ndarray | None = None
        self.frame_t = 0.0

    def see(self, frame: np.ndarray) -> None:
        self.frame, self.frame_t = frame, time.monotonic()

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        if self.frame is None:
            raise CommandRefused("no camera frame has arrived yet")
        age = time.monotonic() - self.frame_t
        if age > self.max_age_s:
            raise CommandRefused(f"the newest frame is {age:.1f} s old: is the camera running?")
        reason = _REASON_RE.sub("_", str(command.get("reason", "snapshot")))[:40] or "snapshot"
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.3f}"[1:]
        path = self.folder / f"{stamp}-{reason}.jpg"
        cv2 = self.cv2
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(self.frame, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise DriverError(f"could not encode a {self.frame.shape} frame as JPEG")
        self.folder.mkdir(parents=True, exist_ok=True)
        # Written to a temporary file and renamed, so a reader never sees half a picture.
        fd, tmp = tempfile.mkstemp(prefix=".snap-", suffix=".jpg", dir=self.folder)
        with os.fdopen(fd, "wb") as f:
            f.write(jpeg.tobytes())
        os.replace(tmp, path)
        self._prune()
        return {"path": str(path), "bytes": len(jpeg)}

    def _prune(self) -> None:
        shots = sorted(self.folder.glob("*.jpg"))
        for old in shots[: max(0, len(shots) - self.keep)]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        self.frame = None


def main(node: Node) -> None:
    folder = Path(node.params["dir"] or Path(node.config.state_dir or ".") / "snapshots")
    snaps = Snapshots(folder, node.params["keep"], node.params["quality"],
                      node.params["max_age_s"])
    node.ready()
    for event in node:
        if event.input == "image":
            snaps.see(event.data)
        elif event.kind == "command":
            handle_command(node, snaps, event)
