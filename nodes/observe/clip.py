"""Clip node: keeps the last seconds of its inputs in a bounded in-memory ring and writes an
MCAP clip around each event it is sent (e.g. by a rule: a visitor at the door).

    - id: clips
      kind: clip
      params: {ring_mb: 8, before_max_s: 5}
      inputs:
        image: {from: cam/image, queue: 4}
        event: rules/clip                       # a rule's `publish: clip` action

An event is any message on the input named `event` (param `trigger`), e.g.
`{before: 5, after: 3, reason: visitor, topics: [cam/image]}` (topics: default all inputs);
its stamp (the capture time of what the rule saw)
is the clip's centre. The clip holds every ring message stamped from `before` seconds before
it (as far back as the ring reaches) to `after` seconds after it, then is written to
`<dir>/<UTC time>-<reason>.mcap` and journaled as `clip_saved` with its path. Frames are
JPEG-compressed as they enter the ring; the ring's size (payload bytes plus a fixed
per-message overhead) never exceeds `ring_mb`: the oldest messages go first.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotrt.codec import Encoder
from iotrt.node import Node, NodeSpec, Param

if TYPE_CHECKING:
    from iotrt.recording import RecordWriter

SPEC = NodeSpec(
    doc="keep the last seconds of the inputs in memory; write an MCAP clip around each event",
    inputs={"*": "streams to keep (frames are JPEG-compressed); the `event` input triggers"},
    params=[
        Param("trigger", str, "event", "the input whose messages ask for a clip"),
        Param("before_max_s", float, 5.0, "the ring keeps this many seconds", min=0.0,
              max=600.0),
        Param("ring_mb", float, 8.0, "memory bound of the ring (MB)", min=0.1),
        Param("before_s", float, 5.0, "default seconds before the event", min=0.0),
        Param("after_s", float, 5.0, "default seconds after the event", min=0.0, max=600.0),
        Param("quality", int, 80, "JPEG quality of frames in the ring", min=1, max=100),
        Param("dir", str, "", "where clips go (default: <state dir>/clips)"),
        Param("keep", int, 50, "keep at most this many clips; the oldest go first", min=1),
    ],
)

# Per-message bookkeeping counted against the ring's bound, on top of the payload bytes.
ENTRY_OVERHEAD = 200
_REASON_RE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Entry:
    topic: str
    kind: str
    payload: bytes
    seq: int
    stamp_ns: int
    log_time_ns: int

    @property
    def size(self) -> int:
        return len(self.payload) + ENTRY_OVERHEAD


class Ring:
    """Encoded messages of the last `span_s` seconds (by stamp), at most `limit` bytes."""

    def __init__(self, limit: int, span_s: float) -> None:
        self.limit, self.span_ns = limit, int(span_s * 1e9)
        self.entries: deque[Entry] = deque()
        self.bytes = 0
        self.peak = 0          # the most bytes the ring held (measured, for the bound)
        self.evicted = 0

    def add(self, e: Entry) -> None:
        self.entries.append(e)
        self.bytes += e.size
        newest = max(e.stamp_ns, self.entries[0].stamp_ns)
        while self.entries and (self.bytes > self.limit
                                or self.entries[0].stamp_ns < newest - self.span_ns):
            old = self.entries.popleft()
            self.bytes -= old.size
            self.evicted += 1
        self.peak = max(self.peak, self.bytes)

    def since(self, stamp_ns: int) -> list[Entry]:
        return [e for e in self.entries if e.stamp_ns >= stamp_ns]


@dataclass
class OpenClip:
    writer: RecordWriter
    event_ns: int
    start_ns: int
    end_ns: int
    fields: dict[str, Any]
    last_arrival: float
    topics: frozenset[str] | None = None   # None: every input
    frames: int = 0


def _seconds(value: Any, default: float, limit: float) -> float:
    """A rule's before/after: seconds as a number, else the default; bounded to [0, limit]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return default
    return min(max(float(value), 0.0), limit)


class Clips:
    """The node's logic without the node: ring, open clips, files."""

    def __init__(self, node: Node) -> None:
        p = self.p = node.params
        self.node = node
        self.ring = Ring(int(p["ring_mb"] * 1e6), p["before_max_s"])
        self.folder = Path(p["dir"] or Path(node.config.state_dir or ".") / "clips")
        self.open: list[OpenClip] = []
        self.encoder = Encoder()
        # numpy and mcap load here, at the node's start: reading SPEC (`iotrt up`) needs neither
        from iotrt.recording import RecordWriter, encode

        self._writer, self._encode = RecordWriter, encode

    def keep(self, env) -> None:
        kind, payload = self._encode(env, "jpeg", self.p["quality"], self.encoder)
        e = Entry(env.topic, kind, payload, env.seq, env.stamp_ns, time.monotonic_ns())
        self.ring.add(e)
        now = time.monotonic()
        for clip in list(self.open):
            if clip.start_ns <= e.stamp_ns <= clip.end_ns:
                self._write(clip, e)
            clip.last_arrival = now
            if e.stamp_ns > clip.end_ns:
                self.finish(clip)

    def event(self, env) -> None:
        data = env.data if isinstance(env.data, dict) else {}
        p = self.p
        before = _seconds(data.get("before"), p["before_s"], p["before_max_s"])
        after = _seconds(data.get("after"), p["after_s"], 600.0)
        reason = _REASON_RE.sub("_", str(data.get("reason", "event")))[:40] or "event"
        wanted = data.get("topics")
        topics = (frozenset(t for t in wanted[:64] if isinstance(t, str))
                  if isinstance(wanted, list) else None)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.3f}"[1:]
        path = self.folder / f"{stamp}-{reason}.mcap"
        writer = self._writer(path, quality=p["quality"],
                              meta={"graph": self.node.config.graph, "clip": reason,
                                    "event_stamp_ns": str(env.stamp_ns)})
        clip = OpenClip(writer, env.stamp_ns, env.stamp_ns - int(before * 1e9),
                        env.stamp_ns + int(after * 1e9),
                        {"reason": reason, "before_s": before, "after_s": after,
                         **{k: data[k] for k in ("rule", "who") if k in data}},
                        time.monotonic(), topics)
        for e in self.ring.since(clip.start_ns):
            if e.stamp_ns <= clip.end_ns:
                self._write(clip, e)
        self.open.append(clip)

    def _write(self, clip: OpenClip, e: Entry) -> None:
        if clip.topics is not None and e.topic not in clip.topics:
            return
        clip.writer.write_encoded(e.topic, e.kind, e.payload, e.seq, e.stamp_ns, e.log_time_ns)
        clip.frames += e.kind == "jpeg"

    def expire(self) -> None:
        """Finish clips whose inputs went quiet (the camera stopped) for `after` + 2 s."""
        now = time.monotonic()
        for clip in list(self.open):
            if now - clip.last_arrival > clip.fields["after_s"] + 2.0:
                self.finish(clip)

    def finish(self, clip: OpenClip) -> None:
        self.open.remove(clip)
        w = clip.writer
        w.close()
        self.node.record("clip_saved", path=str(w.path), messages=w.messages, frames=clip.frames,
                         bytes=w.path.stat().st_size, event_stamp_ns=clip.event_ns,
                         start_ns=clip.start_ns, ring_bytes=self.ring.bytes,
                         ring_peak_bytes=self.ring.peak, ring_limit_bytes=self.ring.limit,
                         **clip.fields)
        self.node.log.info("clip saved: %s (%d frames)", w.path, clip.frames)
        clips = sorted(self.folder.glob("*.mcap"))
        for old in clips[: max(0, len(clips) - self.p["keep"])]:
            old.unlink(missing_ok=True)

    def abandon(self) -> None:
        """Give up the open clips (their file could not be written)."""
        for clip in self.open:
            clip.writer.path.unlink(missing_ok=True)
        self.open.clear()

    def close(self) -> None:
        for clip in list(self.open):
            self.finish(clip)


def main(node: Node) -> None:
    from iotrt.recording import NotRecordable, RecordingError

    clips = Clips(node)
    trigger = node.params["trigger"]
    node.timer("expire", 1.0)
    node.ready()
    bad = 0
    try:
        for event in node:
            if event.kind != "input" and event.timer == "expire":
                clips.expire()
            elif event.kind != "input" or event.envelope is None:
                continue
            elif event.input == trigger:
                try:
                    clips.event(event.envelope)
                except (RecordingError, OSError) as exc:
                    node.log.error("cannot write a clip in %s: %s", clips.folder, exc)
            else:
                try:
                    clips.keep(event.envelope)
                except NotRecordable as exc:
                    bad += 1
                    if bad == 1 or bad % 100 == 0:
                        node.log.warning("skipped %d message(s) it cannot keep: %s", bad, exc)
                except (RecordingError, OSError) as exc:
                    node.log.error("cannot write a clip in %s: %s", clips.folder, exc)
                    clips.abandon()
    finally:
        clips.close()
