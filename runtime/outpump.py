"""The supervisor's own output, written without ever blocking supervision.

A log reader that stops reading (a stalled `journalctl`, `iotrt up | less` left at a page, a
full pipe) would block a plain `write()` to stdout/stderr, and with it the one loop that
restarts nodes and answers `iotrt ps`. So the supervisor's log lines and the node lines it
forwards go to an `OutputPump`: a bounded in-memory queue emptied by a writer thread of its own.
When the queue is full, new lines are dropped and counted; once the reader is back, the pump
writes "iotrt: N lines dropped" before the next line. A closed output (EPIPE) is the same: the
lines are counted, never raised into the loop.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
from typing import TextIO

DEFAULT_MAX_BYTES = 1 << 20      # ~1 MiB of text waits for a slow reader; more is dropped


class OutputPump:
    """Lines to write to text streams, queued (bounded) and written by one daemon thread."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self.dropped = 0                 # lines dropped since the last notice
        self.dropped_total = 0
        self._queue: collections.deque[tuple[TextIO, str]] = collections.deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="output-pump", daemon=True)
        self._thread.start()

    def write(self, stream: TextIO, text: str, lines: int = 1) -> None:
        """Queue `text` (`lines` lines) for `stream`; never blocks, drops when full."""
        with self._cond:
            if self._queued_bytes + len(text) > self.max_bytes or self._closed:
                self.dropped += lines
                self.dropped_total += lines
                return
            self._queue.append((stream, text))
            self._queued_bytes += len(text)
            self._cond.notify()

    def close(self, timeout_s: float = 2.0) -> None:
        """Write what is queued (waiting at most `timeout_s` for a slow reader), then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                stream, text = self._queue.popleft()
                self._queued_bytes -= len(text)
                dropped, self.dropped = self.dropped, 0
            if dropped:
                text = f"iotrt: {dropped} output lines dropped (the log reader was too slow)\n" + text
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):
                # our output is gone (EPIPE, journald restarting, a closed file): losing log
                # lines is better than taking the device down
                with self._cond:
                    self.dropped_total += text.count("\n")


class PumpStream:
    """A file-like front for one stream of the pump, for logging.StreamHandler."""

    def __init__(self, pump: OutputPump, stream: TextIO):
        self.pump, self.stream = pump, stream

    def write(self, text: str) -> int:
        self.pump.write(self.stream, text, max(1, text.count("\n")))
        return len(text)

    def flush(self) -> None:
        pass    # the pump's thread flushes after each write


def route_logging(pump: OutputPump) -> list[tuple[logging.StreamHandler, TextIO]]:
    """Send every root handler that writes to stdout/stderr through `pump`; returns what to
    restore with `unroute_logging`."""
    swapped = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout):
            swapped.append((handler, handler.setStream(PumpStream(pump, handler.stream))))
    return swapped


def unroute_logging(swapped: list[tuple[logging.StreamHandler, TextIO]]) -> None:
    for handler, stream in swapped:
        handler.setStream(stream)


class Throttle:
    """At most one message per key every `every_s` seconds; says how many were held back.

    For warnings about what arrives on the supervisor's sockets: anything local can send it
    garbage at any rate, and the log must not become the way to slow the supervisor down."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def __call__(self, key: str, now: float) -> int | None:
        """None: hold this one back. Else the number held back since the last one let through."""
        if now - self._last.get(key, -self.every_s) < self.every_s:
            self._held[key] += 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
