"""The web node's taps on the bus: subscriptions opened only while somebody looks.

- Video: `Taps.view(topic)` (a context manager) counts a viewer of an image topic; the first
  one opens a latest-wins subscription to it (and to the overlay topics), the last one to
  leave closes them. Each frame is annotated and JPEG-encoded at most `max_fps` times a
  second, once for all viewers of the topic (`Feed.wait` hands out the newest JPEG).
- Latency: `Taps.touch()` (a page open, a /metrics scrape) opens the latency topics; their
  traces feed `latency` (capture -> publish time of each decision) until nobody touched for
  `idle_s`.

One thread owns every subscriber and its selector; other threads ask it for changes through a
queue and a wake-up pipe, so nothing polls: the thread sleeps in select() until a message, a
request or the latency lease's end.
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import logging
import math
import os
import queue
import selectors
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import pynng

from iotrt import wakeup
from iotrt.bus import Subscriber
from iotrt.codec import Envelope

log = logging.getLogger("iotrt.web")

OVERLAY_MAX_AGE_NS = 500_000_000   # boxes older than the frame by more draw nothing
MAX_BOXES = 32                      # boxes drawn per message (the rest are ignored)
MAX_SIDE = 8192                     # larger "frames" are not encoded (not a camera's)
DETECTOR_COLOUR = (255, 255, 0)     # RGB: yellow, on the box: what the detector found
KNOWN_COLOUR = (0, 200, 0)          # green, 3 px out, named: an enrolled person
UNKNOWN_COLOUR = (255, 64, 0)       # orange-red, 3 px out: anybody else


def matching(topics: list[str], patterns: list[str]) -> list[str]:
    return sorted(t for t in topics if any(fnmatch.fnmatchcase(t, p) for p in patterns))


@dataclass
class Box:
    x1: int
    y1: int
    x2: int
    y2: int
    label: str = ""
    known: bool | None = None       # None: a bare detector box


def _coord(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return int(max(-10_000, min(10_000, v)))


def _box(raw: Any) -> tuple[int, int, int, int] | None:
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        return None
    c = [_coord(v) for v in raw]
    return None if None in c else (c[0], c[1], c[2], c[3])


def parse_overlay(data: Any) -> list[Box] | None:
    """Boxes from a detector's {boxes: [...]} or an identity's {faces: [{box, name, known}]};
    None for anything else. Untrusted: malformed entries are skipped, at most MAX_BOXES."""
    if not isinstance(data, dict):
        return None
    out: list[Box] = []
    if isinstance(data.get("faces"), list):
        for f in data["faces"][:MAX_BOXES]:
            b = _box(f.get("box")) if isinstance(f, dict) else None
            if b is not None:
                name = f.get("name")
                out.append(Box(*b, label=name[:40] if isinstance(name, str) else "?",
                               known=f.get("known") is True))
        return out
    if isinstance(data.get("boxes"), list):
        for raw in data["boxes"][:MAX_BOXES]:
            b = _box(raw)
            if b is not None:
                out.append(Box(*b))
        return out
    return None


def annotate(frame: np.ndarray, overlays: list[list[Box]]) -> np.ndarray:
    """A BGR copy of an RGB frame with the boxes drawn (detector on the box, identity around
    it with the name)."""
    img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    for boxes in overlays:
        for b in boxes:
            if b.known is None:
                cv2.rectangle(img, (b.x1, b.y1), (b.x2, b.y2), DETECTOR_COLOUR[::-1], 2)
                continue
            colour = (KNOWN_COLOUR if b.known else UNKNOWN_COLOUR)[::-1]
            cv2.rectangle(img, (b.x1 - 3, b.y1 - 3), (b.x2 + 3, b.y2 + 3), colour, 2)
            # cv2's Hershey font has ASCII only: anything else becomes '?'
            text = "".join(c if 32 <= ord(c) < 127 else "?" for c in b.label)
            cv2.putText(img, text, (b.x1, max(12, b.y1 - 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        colour, 1, cv2.LINE_AA)
    return img


class Pacer:
    """Lets through one event per `period` on average from a jittery stream: an event a little
    early (a fifth of a period) still counts, and one that comes late moves the next due time
    back by the lateness (up to half a period), so a 15 fps camera capped at 10 gives 10 fps,
    not 7.5, and a 5 fps feed watched at 5 fps is not halved by jitter."""

    def __init__(self) -> None:
        self.due = -math.inf

    def ready(self, now: float, period: float) -> bool:
        if now < self.due - period / 5:
            return False
        first = self.due == -math.inf
        self.due = now + period if first else max(self.due + period, now + period / 2)
        return True


class Feed:
    """The newest JPEG of one image topic, shared by its viewers."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.viewers = 0
        self.rates: list[float] = []      # the frame rate each viewer asked for
        self.jpeg: bytes | None = None
        self.seq = 0
        self.pacer = Pacer()
        self.closed = False
        self._cond = threading.Condition()

    def put(self, jpeg: bytes) -> None:
        with self._cond:
            self.jpeg, self.seq = jpeg, self.seq + 1
            self._cond.notify_all()

    def wait(self, after: int, timeout_s: float) -> tuple[int, bytes | None]:
        """(seq, jpeg) of a frame newer than `after`, or (after, None) on timeout/close."""
        with self._cond:
            self._cond.wait_for(lambda: self.seq > after or self.closed, timeout_s)
            if self.seq > after and not self.closed:
                return self.seq, self.jpeg
            return after, None

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


@dataclass
class _Tap:
    topic: str
    role: str                              # "video" | "overlay" | "latency"
    sub: Subscriber
    latest: tuple[int, list[Box]] | None = None   # overlay: (stamp_ns, boxes)


@dataclass
class Latency:
    """Capture -> decision latencies: a Prometheus histogram and the recent ones for the page."""

    observe: Callable[[str, float], None]
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=512))
    lock: threading.Lock = field(default_factory=threading.Lock)   # taps thread vs pages

    def add(self, topic: str, env: Envelope) -> None:
        if not env.trace or not isinstance(env.trace[-1], list) or len(env.trace[-1]) != 2:
            return
        t = env.trace[-1][1]
        if type(t) is not int:
            return
        seconds = (t - env.stamp_ns) / 1e9
        if 0.0 <= seconds < 3600.0:       # a stamp from another clock says nothing
            self.observe(topic, seconds)
            with self.lock:
                self.recent.append(seconds)

    def summary(self) -> dict[str, float | int | None]:
        with self.lock:
            vals = sorted(self.recent)
        if not vals:
            return {"n": 0, "p50_ms": None, "p99_ms": None}
        pick = lambda q: round(1000 * vals[min(len(vals) - 1, int(q * len(vals)))], 1)  # noqa: E731
        return {"n": len(vals), "p50_ms": pick(0.5), "p99_ms": pick(0.99)}


class Taps:
    """See the module docstring. `addresses()` returns topic -> address (from the control
    socket); `on_frame()` counts encoded frames."""

    def __init__(self, addresses: Callable[[], dict[str, str]], *, max_fps: float,
                 quality: int, overlay_patterns: list[str], latency_patterns: list[str],
                 idle_s: float, latency: Latency, on_frame: Callable[[], None] = lambda: None,
                 guard: Callable[[Callable], Callable] = lambda f: f):
        self._addresses = addresses
        self.period = 1.0 / max_fps
        self.quality = quality
        self.overlay_patterns, self.latency_patterns = overlay_patterns, latency_patterns
        self.idle_s = idle_s
        self.latency = latency
        self._on_frame = on_frame
        self._lock = threading.Lock()
        self.feeds: dict[str, Feed] = {}
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._touched = -math.inf
        self._latency_open = False
        self._taps: dict[str, _Tap] = {}          # key: role + ":" + topic
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = wakeup.pipe()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = False
        self._thread = threading.Thread(target=guard(self._run), name="web-taps", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- asked from other threads ----------------------------------------------------------------

    @contextlib.contextmanager
    def view(self, topic: str, fps: float) -> Iterator[Feed]:
        """Be a viewer of `topic` at up to `fps` (capped) for the duration of the block; the
        topic is encoded at the highest rate any of its viewers asked for."""
        with self._lock:
            feed = self.feeds.get(topic)
            if feed is None:
                feed = self.feeds[topic] = Feed(topic)
            feed.viewers += 1
            feed.rates.append(fps)
            first = feed.viewers == 1
        if first:
            self._ask("sync")
        try:
            yield feed
        finally:
            with self._lock:
                feed.viewers -= 1
                feed.rates.remove(fps)
                last = feed.viewers == 0
                if last:
                    del self.feeds[topic]
                    feed.close()
            if last:
                self._ask("sync")

    @property
    def viewers(self) -> int:
        with self._lock:
            return sum(f.viewers for f in self.feeds.values())

    def touch(self) -> None:
        """Somebody looked at the latency: keep (or start) reading decision traces."""
        self._touched = time.monotonic()
        if not self._latency_open:
            self._ask("sync")

    def subscribed(self) -> list[str]:
        """role:topic of every open subscription (for tests and the status page)."""
        with self._lock:
            return sorted(self._taps)

    def close(self) -> None:
        self._stop = True
        self._ask("stop")
        if self._thread.is_alive():
            self._thread.join(5)
        for tap in self._taps.values():
            tap.sub.close()
        self._taps.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _ask(self, what: str) -> None:
        self._requests.put(what)
        wakeup.wake(self._wake_w)

    # -- the taps thread -----------------------------------------------------------------------

    def _wanted(self, now: float) -> dict[str, tuple[str, str]]:
        """key -> (role, topic) of the subscriptions that should be open now."""
        with self._lock:
            video = list(self.feeds)
        self._latency_open = now - self._touched < self.idle_s
        if not video and not self._latency_open:
            return {}
        try:
            topics = self._addresses()
        except RuntimeError as exc:   # the supervisor did not answer (ControlError): retry later
            log.warning("web: cannot list the graph's topics: %s", exc)
            return {k: (t.role, t.topic) for k, t in self._taps.items()}
        want = {f"video:{t}": ("video", t) for t in video if t in topics}
        if video:
            want.update({f"overlay:{t}": ("overlay", t)
                         for t in matching(list(topics), self.overlay_patterns)})
        if self._latency_open:
            want.update({f"latency:{t}": ("latency", t)
                         for t in matching(list(topics), self.latency_patterns)})
        return want

    def _sync(self, now: float) -> None:
        want = self._wanted(now)
        for key in [k for k in self._taps if k not in want]:
            with self._lock:
                tap = self._taps.pop(key)
            self._sel.unregister(tap.sub.fileno())
            tap.sub.close()
            log.debug("web: unsubscribed from %s", key)
        if len(want) > len(self._taps):
            addresses = self._addresses()
            for key, (role, topic) in want.items():
                if key not in self._taps:
                    try:
                        sub = Subscriber(addresses[topic], queue=1 if role != "latency" else 64,
                                         name=f"web.{key}")
                    except (ValueError, pynng.NNGException) as exc:   # AddressError, no fds
                        log.warning("web: cannot subscribe to %s: %s", topic, exc)
                        continue
                    tap = _Tap(topic, role, sub)
                    with self._lock:
                        self._taps[key] = tap
                    self._sel.register(sub.fileno(), selectors.EVENT_READ, tap)
                    log.debug("web: subscribed to %s", key)

    def _run(self) -> None:
        while not self._stop:
            timeout = None
            if self._latency_open:      # wake when the latency lease ends
                timeout = max(0.0, self._touched + self.idle_s - time.monotonic()) + 0.01
            for key, _ in self._sel.select(timeout):
                tap = key.data
                if tap is None:
                    wakeup.drain(self._wake_r)
                    continue
                if (self._taps.get(f"{tap.role}:{tap.topic}") is tap
                        and (env := tap.sub.recv_nowait()) is not None):
                    self._handle(tap, env)
            sync = False
            while True:
                try:
                    what = self._requests.get_nowait()
                except queue.Empty:
                    break
                if what == "stop":
                    return
                sync = True
            now = time.monotonic()
            if sync or (self._latency_open and now - self._touched >= self.idle_s):
                self._sync(now)

    def _handle(self, tap: _Tap, env: Envelope) -> None:
        if tap.role == "latency":
            self.latency.add(tap.topic, env)
        elif tap.role == "overlay":
            boxes = parse_overlay(env.data)
            if boxes is not None:
                tap.latest = (env.stamp_ns, boxes)
        else:
            self._encode(tap.topic, env)

    def _encode(self, topic: str, env: Envelope) -> None:
        feed = self.feeds.get(topic)
        now = time.monotonic()
        if feed is None or not feed.rates:
            return
        if not feed.pacer.ready(now, max(self.period, 1.0 / max(feed.rates))):
            return  # over the cap: this frame is skipped without being touched
        frame = env.data
        if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3
                and frame.shape[2] == 3 and 0 < frame.shape[0] <= MAX_SIDE
                and 0 < frame.shape[1] <= MAX_SIDE):
            return
        overlays = [tap.latest[1] for tap in self._taps.values()
                    if tap.role == "overlay" and tap.latest is not None
                    and 0 <= env.stamp_ns - tap.latest[0] <= OVERLAY_MAX_AGE_NS]
        img = annotate(frame, overlays)
        ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if ok:
            feed.put(jpeg.tobytes())
            self._on_frame()
