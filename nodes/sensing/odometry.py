"""Wheel odometry node: encoder ticks -> differential-drive pose (x, y, heading, v, omega).

Output `odom`: `{"x", "y", "theta" (m, m, rad, wrapped to [-pi, pi)), "v" (m/s), "omega" (rad/s),
"s" (signed path length so far, m)}`; `stamp_ns` = monotonic time the ticks were read. Time
comes from the monotonic clock only: boards without an RTC jump when NTP syncs.

Each step integrates the exact arc for constant speed and turn rate over the step, so a
constant-curvature path (a circle) has no integration error at any sample rate.

Serial line format (one reading per line, ASCII, comma-separated, `#` starts a comment line):
    left,right          cumulative encoder ticks of each wheel (signed integers)
    t_us,left,right     optional leading device time in microseconds (ignored)
Counters may wrap around at 32 bits.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.sensing.serial_lines import BadLine, SerialLines, parse_floats

SPEC = NodeSpec(
    doc="differential-drive wheel odometry from encoder ticks (serial or sim)",
    inputs={},
    outputs={"odom": "{x, y, theta, v, omega, s}"},
    params=[
        Param("driver", str, "sim", "tick source", choices=("sim", "serial")),
        Param("rate_hz", float, 50.0, "how often ticks are read and odometry published",
              min=1.0, max=1000.0),
        Param("wheel_radius", float, 0.033, "wheel radius in m"),
        Param("wheel_base", float, 0.16, "distance between the wheels' contact points in m"),
        Param("ticks_per_rev", float, 1440.0, "encoder ticks per wheel revolution"),
        Param("port", str, "/dev/ttyACM0", "serial: port"),
        Param("baud", int, 115200, "serial: baud rate"),
        Param("sim_speed", float, 0.2, "sim: forward speed in m/s"),
        Param("sim_yaw_rate", float, 0.0, "sim: yaw rate in rad/s"),
        Param("sim_start_s", float, 2.5, "sim: still this long before driving (as the IMU's sim)",
              min=0.0),
    ],
    simulated=lambda p: p["driver"] == "sim",
)

WRAP = 2**32


@dataclass(frozen=True)
class Wheels:
    radius: float = 0.033
    base: float = 0.16
    ticks_per_rev: float = 1440.0

    def __post_init__(self):
        if self.radius <= 0 or self.base <= 0 or self.ticks_per_rev <= 0:
            raise ValueError(
                f"odometry: wheel_radius, wheel_base and ticks_per_rev must be positive, "
                f"got {self.radius}, {self.base}, {self.ticks_per_rev}"
            )

    @property
    def metres_per_tick(self) -> float:
        return 2 * math.pi * self.radius / self.ticks_per_rev


def wrap_angle(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def tick_delta(new: int, old: int) -> int:
    """Signed difference of two 32-bit wrapping counters."""
    return (new - old + WRAP // 2) % WRAP - WRAP // 2


def arc_step(x: float, y: float, theta: float, ds: float, dtheta: float) -> tuple[float, float]:
    """Position after moving ds along an arc turning by dtheta, starting at heading theta."""
    if abs(dtheta) < 1e-9:
        return x + ds * math.cos(theta), y + ds * math.sin(theta)
    r = ds / dtheta
    return (x + r * (math.sin(theta + dtheta) - math.sin(theta)),
            y - r * (math.cos(theta + dtheta) - math.cos(theta)))


class DiffDrive:
    """Integrates cumulative tick readings: `update(left, right, t_ns)` -> odometry dict.

    v and omega are measured over the last `window_s` rather than one step: at 50 Hz a wheel
    moves only ~28 ticks per step, so one tick of quantisation would be 4 % of the speed.
    """

    def __init__(self, wheels: Wheels, window_s: float = 0.2):
        self.wheels = wheels
        self.window_ns = int(window_s * 1e9)
        self.x = self.y = self.theta = self.s = 0.0
        self.v = self.omega = 0.0
        self.last: tuple[int, int, int] | None = None
        self.history: deque[tuple[int, float, float]] = deque()  # (t_ns, s, theta)

    def update(self, left: int, right: int, t_ns: int) -> dict:
        if self.last is not None:
            l0, r0, t0 = self.last
            k = self.wheels.metres_per_tick
            dl, dr = tick_delta(left, l0) * k, tick_delta(right, r0) * k
            ds, dtheta = (dl + dr) / 2, (dr - dl) / self.wheels.base
            self.x, self.y = arc_step(self.x, self.y, self.theta, ds, dtheta)
            self.theta += dtheta
            self.s += ds
        self._rates(t_ns)
        self.last = (left, right, t_ns)
        return self.state()

    def _rates(self, t_ns: int) -> None:
        self.history.append((t_ns, self.s, self.theta))
        # Keep one sample at or beyond the window's start, so the span covers the window.
        while len(self.history) > 2 and t_ns - self.history[1][0] >= self.window_ns:
            self.history.popleft()
        t0, s0, th0 = self.history[0]
        if t_ns > t0:
            dt = (t_ns - t0) / 1e9
            self.v, self.omega = (self.s - s0) / dt, (self.theta - th0) / dt

    def state(self) -> dict:
        return {"x": self.x, "y": self.y, "theta": wrap_angle(self.theta),
                "v": self.v, "omega": self.omega, "s": self.s}


def parse_line(line: str) -> tuple[int, int]:
    v = parse_floats(line, (2, 3), "odometry line")
    left, right = v[-2:]
    if left != int(left) or right != int(right):
        raise BadLine(f"odometry line: ticks must be integers: {line!r}")
    return int(left), int(right)


class SerialTicks:
    def __init__(self, port: str, baud: int, log=None, serial_factory=None):
        self.lines = SerialLines(port, baud, parse_line, log, serial_factory)

    def read(self) -> list[tuple[tuple[int, int], int]]:
        return self.lines.samples()

    def close(self) -> None:
        self.lines.close()


class SimTicks:
    """Encoders of a robot that stands still for `start_s`, then drives at constant speed and
    yaw rate (a line or a circle)."""

    def __init__(self, wheels: Wheels, speed: float, yaw_rate: float, clock=time.monotonic_ns,
                 start_s: float = 0.0):
        self.wheels, self.clock, self.start_s = wheels, clock, start_s
        self.v_left = speed - yaw_rate * wheels.base / 2
        self.v_right = speed + yaw_rate * wheels.base / 2
        self.t0 = clock()

    def ticks_at(self, t_s: float) -> tuple[int, int]:
        k = self.wheels.metres_per_tick
        t = max(0.0, t_s - self.start_s)
        return math.floor(self.v_left * t / k), math.floor(self.v_right * t / k)

    def read(self) -> list[tuple[tuple[int, int], int]]:
        now = self.clock()
        return [(self.ticks_at((now - self.t0) / 1e9), now)]

    def close(self) -> None:
        pass


def main(node: Node) -> None:
    p = node.params
    wheels = Wheels(p["wheel_radius"], p["wheel_base"], p["ticks_per_rev"])
    if p["driver"] == "serial":
        driver = SerialTicks(p["port"], p["baud"], node.log)
    else:
        driver = SimTicks(wheels, p["sim_speed"], p["sim_yaw_rate"], start_s=p["sim_start_s"])
    odo = DiffDrive(wheels)
    node.timer("read", 1.0 / p["rate_hz"])
    node.ready()
    try:
        for event in node:
            if event.kind != "timer":
                continue
            for (left, right), stamp in driver.read():
                node.publish("odom", odo.update(left, right, stamp), stamp_ns=stamp)
    finally:
        driver.close()
