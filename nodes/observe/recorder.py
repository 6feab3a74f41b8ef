"""Recorder node: records its inputs to MCAP files continuously, with rotation.

    - id: rec
      kind: recorder
      params: {max_file_s: 600, keep_files: 24}     # 4 hours of history in 10-minute files
      inputs:
        image: {from: cam/image, queue: 4}
        faces: who/faces

Each input's messages are written with their own topic (the publisher's, e.g. `cam/image`), so
a file replays with `iotrt replay FILE --graph GRAPH`. A new file starts when the current one
reaches `max_file_mb` or `max_file_s`; the oldest files go first when there are more than
`keep_files` or together more than `keep_mb`. Each finished file is journaled
(`recording_saved` with its path, counts and drops). Like every subscriber it is latest-wins:
when the disk or the CPU cannot keep up it drops messages (counted, stored in the file) and
never slows the graph. Format: docs/record.md.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from iotrt.node import Node, NodeSpec, Param
from iotrt.recording import FRAME_ENCODINGS, NotRecordable, RecordingError, RecordWriter

SPEC = NodeSpec(
    doc="record the inputs to MCAP files, rotated by size or duration",
    inputs={"*": "any stream; recorded under its publisher's topic"},
    params=[
        Param("dir", str, "", "where files go (default: <state dir>/recordings)"),
        Param("prefix", str, "", "file name prefix (default: the node id)"),
        Param("frames", str, "jpeg", "RGB frames stored as JPEG or raw", choices=FRAME_ENCODINGS),
        Param("quality", int, 80, "JPEG quality", min=1, max=100),
        Param("max_file_mb", float, 256.0, "start a new file at this size (0: no limit)",
              min=0.0),
        Param("max_file_s", float, 600.0, "start a new file after this long (0: no limit)",
              min=0.0),
        Param("keep_files", int, 10, "keep at most this many files (0: no limit)", min=0),
        Param("keep_mb", float, 0.0, "keep at most this many MB of files (0: no limit)",
              min=0.0),
        Param("flush_s", float, 1.0, "flush at least this often: a crash loses at most this "
                                     "much", min=0.05, max=60.0),
    ],
)


class Rotation:
    """The current file and the ones before it: rotate on size or age, prune old files."""

    def __init__(self, folder: Path, prefix: str, *, frames: str, quality: int,
                 max_bytes: int, max_s: float, keep_files: int, keep_bytes: int,
                 flush_s: float, meta: dict[str, str]) -> None:
        self.folder, self.prefix = folder, prefix
        self.frames, self.quality, self.flush_s, self.meta = frames, quality, flush_s, meta
        self.max_bytes, self.max_s = max_bytes, max_s
        self.keep_files, self.keep_bytes = keep_files, keep_bytes
        self.writer: RecordWriter | None = None
        self.opened = 0.0
        self._n = 0

    def _open(self) -> RecordWriter:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._n += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = self.folder / f"{self.prefix}-{stamp}-{self._n:04d}.mcap"
        self.writer = RecordWriter(path, frames=self.frames, quality=self.quality,
                                   meta=self.meta, flush_s=self.flush_s)
        self.opened = time.monotonic()
        return self.writer

    def write(self, env, drops: Counter) -> RecordWriter | None:
        """Write `env`; returns the writer of a file this write finished (rotation), if any."""
        w = self.writer or self._open()
        w.write(env)
        return self.rotate_if_due(drops)

    def rotate_if_due(self, drops: Counter) -> RecordWriter | None:
        w = self.writer
        if w is None:
            return None
        w.flush_if_due()
        full = self.max_bytes and w.bytes >= self.max_bytes
        old = self.max_s and time.monotonic() - self.opened >= self.max_s
        return self.close(drops) if full or old else None

    def close(self, drops: Counter) -> RecordWriter | None:
        w, self.writer = self.writer, None
        if w is None:
            return None
        w.drops.update(drops)
        drops.clear()
        w.close()
        self.prune()
        return w

    def prune(self) -> list[Path]:
        """Delete the oldest finished files beyond keep_files / keep_bytes."""
        files = sorted(self.folder.glob(f"{self.prefix}-*.mcap"))
        current = self.writer.path if self.writer is not None else None
        files = [f for f in files if f != current]
        sizes = {f: f.stat().st_size for f in files}
        removed = []
        while files and ((self.keep_files and len(files) + (current is not None)
                          > self.keep_files)
                         or (self.keep_bytes and sum(sizes[f] for f in files) > self.keep_bytes)):
            old = files.pop(0)
            old.unlink(missing_ok=True)
            removed.append(old)
        return removed


def main(node: Node) -> None:
    p = node.params
    folder = Path(p["dir"] or Path(node.config.state_dir or ".") / "recordings")
    rot = Rotation(folder, p["prefix"] or node.id, frames=p["frames"], quality=p["quality"],
                   max_bytes=int(p["max_file_mb"] * 1e6), max_s=p["max_file_s"],
                   keep_files=p["keep_files"], keep_bytes=int(p["keep_mb"] * 1e6),
                   flush_s=p["flush_s"], meta={"graph": node.config.graph, "recorder": node.id})
    topics = {name: ep.topic or name for name, ep in node.config.inputs.items()}
    seen_drops: Counter = Counter()   # drops counted by the inputs so far
    pending: Counter = Counter()      # drops not yet stored in a file

    def collect() -> None:
        for name, st in node.stats()["in"].items():
            n = st.get("drops", 0)
            if n > seen_drops[name]:
                pending[topics.get(name, name)] += n - seen_drops[name]
                seen_drops[name] = n

    def saved(w: RecordWriter | None) -> None:
        if w is not None:
            node.record("recording_saved", path=str(w.path), messages=w.messages,
                        bytes=w.path.stat().st_size, drops=sum(w.drops.values()))

    node.timer("rotate", min(1.0, p["flush_s"]))
    node.ready()
    bad = 0
    try:
        for event in node:
            if event.kind == "input" and event.envelope is not None:
                try:
                    collect()
                    saved(rot.write(event.envelope, pending))
                except NotRecordable as exc:
                    bad += 1
                    if bad == 1 or bad % 100 == 0:
                        node.log.warning("skipped %d message(s) it cannot store: %s", bad, exc)
                except (RecordingError, OSError) as exc:
                    raise SystemExit(f"node {node.id!r}: cannot write recordings in {folder}: "
                                     f"{exc}") from None
            elif event.timer == "rotate":
                collect()
                saved(rot.rotate_if_due(pending))
    finally:
        collect()
        saved(rot.close(pending))
