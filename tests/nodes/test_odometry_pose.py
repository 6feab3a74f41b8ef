"""Odometry and pose against analytic trajectories (straight line, circle).

Tolerances: encoder quantisation is 2*pi*r/ticks = 0.144 mm per tick with the defaults, so
odometry alone must land within 5 mm of the analytic position after 10 s; the fused pose, whose
gyro carries white noise, within 2 cm and 0.01 rad.
"""

from __future__ import annotations

import math
import os
import time
import tty

import numpy as np
import pytest

from iotrt.nodes.perception.pose import PoseFilter
from iotrt.nodes.sensing import odometry as od

WHEELS = od.Wheels(radius=0.033, base=0.16, ticks_per_rev=1440)
RATE = 50  # Hz
NS = 1_000_000_000


def drive(speed, yaw_rate, seconds, wheels=WHEELS, truth_wheels=None):
    """(t_ns, left, right) readings of a robot driving at constant speed and yaw rate.

    `truth_wheels` lets the real robot differ from the model (e.g. one tyre worn smaller)."""
    sim = od.SimTicks(truth_wheels or wheels, speed, yaw_rate, clock=lambda: 0)
    return [(i * NS // RATE, *sim.ticks_at(i / RATE)) for i in range(int(seconds * RATE) + 1)]


def analytic(speed, yaw_rate, t):
    if yaw_rate == 0:
        return speed * t, 0.0, 0.0
    r = speed / yaw_rate
    return r * math.sin(yaw_rate * t), r * (1 - math.cos(yaw_rate * t)), yaw_rate * t


def run_odometry(readings):
    odo = od.DiffDrive(WHEELS)
    return [odo.update(left, right, t) for t, left, right in readings]


def test_straight_line():
    out = run_odometry(drive(0.2, 0.0, 10))[-1]
    assert out["x"] == pytest.approx(2.0, abs=0.005)
    assert abs(out["y"]) < 1e-9 and abs(out["theta"]) < 1e-9
    assert out["v"] == pytest.approx(0.2, rel=0.02) and out["omega"] == pytest.approx(0.0, abs=1e-6)
    assert out["s"] == pytest.approx(2.0, abs=0.005)


@pytest.mark.parametrize("t_end", [2.5, 6.0, 4 * math.pi])  # part of the way, and a full circle
def test_circle(t_end):
    speed, yaw = 0.2, 0.5  # radius 0.4 m, one lap in 4*pi s
    out = run_odometry(drive(speed, yaw, t_end))[-1]
    t = round(t_end * RATE) / RATE
    x, y, th = analytic(speed, yaw, t)
    assert math.hypot(out["x"] - x, out["y"] - y) < 0.005, (out, (x, y))
    assert abs(od.wrap_angle(out["theta"] - th)) < 0.005
    assert out["omega"] == pytest.approx(yaw, rel=0.05)


def test_backwards_and_turning_on_the_spot():
    out = run_odometry(drive(-0.1, 0.0, 5))[-1]
    assert out["x"] == pytest.approx(-0.5, abs=0.005) and out["s"] == pytest.approx(-0.5, abs=0.005)
    readings = drive(0.0, 1.0, 1.5)
    out = run_odometry(readings)[-1]
    assert math.hypot(out["x"], out["y"]) < 1e-3
    assert out["theta"] == pytest.approx(1.5, abs=0.005)


def test_32_bit_counters_wrap_without_a_jump():
    odo = od.DiffDrive(WHEELS)
    start = 2**32 - 50
    odo.update(start, start, 0)
    out = odo.update((start + 100) % 2**32, (start + 100) % 2**32, NS)
    assert out["s"] == pytest.approx(100 * WHEELS.metres_per_tick)
    assert od.tick_delta(5, 2**32 - 5) == 10 and od.tick_delta(2**32 - 5, 5) == -10


def test_wheel_parameters_are_validated():
    with pytest.raises(ValueError, match="must be positive"):
        od.Wheels(radius=0.0)


def test_serial_ticks_over_a_pty():
    master, slave = os.openpty()
    tty.setraw(slave)
    driver = od.SerialTicks(os.ttyname(slave), 115200)
    try:
        os.write(master, b"0,0\n123456,100,-100\n1.5,2\nx\n")
        got, deadline = [], time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got += driver.read()
            time.sleep(0.005)
        assert [ticks for ticks, _ in got] == [(0, 0), (100, -100)]
        assert driver.lines.bad == 2  # "1.5,2" (not integers) and "x"
    finally:
        driver.close()
        os.close(master)
        os.close(slave)


# ---- pose: odometry fused with the gyro ------------------------------------------------------

def fuse(readings, yaw_rate, gyro_bias=0.0, noise=0.0, imu_rate=100, weight=0.9, seed=0):
    """Feed odometry at 50 Hz and the gyro at `imu_rate`, interleaved by time like the bus would."""
    rng = np.random.default_rng(seed)
    filt = PoseFilter(gyro_weight=weight)
    odo = od.DiffDrive(WHEELS)
    t_end = readings[-1][0]
    imu_times = range(0, t_end + 1, NS // imu_rate)
    events = [(t, 0, None) for t in imu_times] + [(t, 1, (left, right)) for t, left, right in readings]
    out = None
    for t, kind, ticks in sorted(events, key=lambda e: (e[0], e[1])):
        if kind == 0:
            filt.on_imu(yaw_rate + gyro_bias + rng.normal(0, noise), t)
        else:
            o = odo.update(*ticks, t)
            out = filt.on_odom(o["s"], o["theta"], t)
    return out


@pytest.mark.parametrize("speed,yaw", [(0.2, 0.0), (0.2, 0.5)])
def test_pose_follows_line_and_circle(speed, yaw):
    t_end = 10.0
    out = fuse(drive(speed, yaw, t_end), yaw, noise=0.005)
    x, y, th = analytic(speed, yaw, t_end)
    assert out["source"] == "fused"
    assert math.hypot(out["x"] - x, out["y"] - y) < 0.02, (out, (x, y))
    assert abs(od.wrap_angle(out["theta"] - th)) < 0.01
    assert out["v"] == pytest.approx(speed, rel=0.05)


def test_gyro_corrects_heading_when_a_wheel_is_worn():
    """The right tyre is 3 % smaller than the model says: odometry over-counts the right wheel's
    travel and sees a turn that is not there; the gyro does not."""
    worn = od.Wheels(radius=0.033, base=0.16, ticks_per_rev=1440 * 1.03)
    readings = []
    sim_l = od.SimTicks(WHEELS, 0.2, 0.0, clock=lambda: 0)
    sim_r = od.SimTicks(worn, 0.2, 0.0, clock=lambda: 0)
    for i in range(10 * RATE + 1):
        readings.append((i * NS // RATE, sim_l.ticks_at(i / RATE)[0], sim_r.ticks_at(i / RATE)[1]))
    odo_only = run_odometry(readings)[-1]
    fused = fuse(readings, 0.0)
    assert abs(odo_only["theta"]) > 0.3  # the wheels alone think the robot turned a lot
    assert abs(fused["theta"]) < abs(odo_only["theta"]) * 0.15
    assert abs(fused["y"]) < abs(odo_only["y"]) * 0.15


def test_pose_falls_back_to_odometry_when_the_imu_goes_quiet():
    filt = PoseFilter(gyro_weight=1.0, imu_timeout_s=0.2)
    filt.on_imu(0.0, 0)
    filt.on_odom(0.0, 0.0, 0)
    assert filt.on_odom(0.1, 0.0, NS // 10)["source"] == "fused"
    late = filt.on_odom(0.2, 0.5, NS)  # last IMU sample was 1 s ago
    assert late["source"] == "odometry" and late["theta"] == pytest.approx(0.5)


def test_gyro_weight_is_validated():
    with pytest.raises(ValueError, match="gyro_weight"):
        PoseFilter(gyro_weight=1.5)
