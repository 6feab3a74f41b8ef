"""Line-oriented serial input shared by the IMU and odometry drivers.

Microcontrollers that front a sensor usually print one sample per line. `SerialLines` reads
whatever has arrived without blocking (the node's loop must keep ticking), splits complete lines
and parses each with the driver's parser; malformed lines are counted and reported, never raised
out of the loop, because a serial link that was just plugged in starts mid-line.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from iotrt import errors


class BadLine(errors.DeviceError, ValueError):
    """A line that does not match the driver's documented format."""


def parse_floats(line: str, counts: tuple[int, ...], what: str) -> list[float]:
    """Comma-separated numbers; `counts` lists the accepted field counts."""
    fields = line.split(",")
    if len(fields) not in counts:
        raise BadLine(f"{what}: expected {' or '.join(map(str, counts))} fields, got {len(fields)}: {line!r}")
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise BadLine(f"{what}: not a number in {line!r}") from None
    # "nan"/"inf" parse as floats; one such sample would poison a bias estimate or a pose
    if not all(math.isfinite(v) for v in values):
        raise BadLine(f"{what}: not a finite number in {line!r}")
    return values


class SerialLines:
    """Non-blocking line reader over a pyserial port: `samples()` -> parsed samples so far."""

    MAX_LINE = 256  # a line longer than this is garbage (wrong baud rate), not a sample

    def __init__(
        self,
        port: str,
        baud: int,
        parse: Callable[[str], Any],
        log: logging.Logger | None = None,
        serial_factory: Callable[..., Any] | None = None,
    ):
        if serial_factory is None:
            import serial  # the 'hardware' extra; imported here so sim-only installs work

            serial_factory = serial.Serial
        self.port = port
        self.ser = serial_factory(port, baud, timeout=0)
        self.parse = parse
        self.log = log or logging.getLogger(__name__)
        self.buf = b""
        self.bad = 0
        self._last_warn = 0.0

    def samples(self) -> list[tuple[Any, int]]:
        """Every complete line received since the last call, parsed, with its arrival stamp."""
        chunk = self.ser.read(self.ser.in_waiting or 1)
        stamp = time.monotonic_ns()
        if not chunk:
            return []
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        if len(self.buf) > self.MAX_LINE:
            self._bad(f"{self.port}: {len(self.buf)} bytes without a newline (wrong baud rate?)")
            self.buf = b""
        out = []
        for raw in lines:
            line = raw.decode("ascii", "replace").strip()
            if not line or line.startswith("#"):
                continue
            try:
                out.append((self.parse(line), stamp))
            except BadLine as exc:
                self._bad(f"{self.port}: {exc}")
        return out

    def _bad(self, message: str) -> None:
        self.bad += 1
        now = time.monotonic()
        if now - self._last_warn > 5.0:  # at most one warning per 5 s: a noisy link must not flood logs
            self._last_warn = now
            self.log.warning("%s (%d bad lines so far)", message, self.bad)

    def close(self) -> None:
        self.ser.close()
