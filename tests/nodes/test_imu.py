"""IMU drivers: serial over a real pty, MPU-6050 against a fake bus with the smbus2 API, the sim,
and start-up calibration removing a known bias."""

from __future__ import annotations

import math
import os
import time
import tty

import numpy as np
import pytest

from iotrt.nodes.sensing import imu
from iotrt.nodes.sensing.serial_lines import BadLine


@pytest.fixture
def pty_pair():
    """(master fd, slave path) of a raw pseudo-terminal, closed afterwards."""
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no newline translation: bytes pass as a UART would send them
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def read_until(driver, n, deadline_s=5.0):
    got = []
    deadline = time.monotonic() + deadline_s
    while len(got) < n and time.monotonic() < deadline:
        got += driver.read()
        time.sleep(0.005)
    return got


def test_parse_line_accepts_both_documented_formats():
    s = imu.parse_line("0.1,0.2,9.8,0.01,0.02,0.03")
    assert s.accel.tolist() == [0.1, 0.2, 9.8] and s.gyro.tolist() == [0.01, 0.02, 0.03]
    s = imu.parse_line("123456,0.1,0.2,9.8,0.01,0.02,0.03")
    assert s.gyro.tolist() == [0.01, 0.02, 0.03]
    with pytest.raises(BadLine, match="expected 6 or 7 fields, got 3"):
        imu.parse_line("1,2,3")
    with pytest.raises(BadLine, match="not a number"):
        imu.parse_line("1,2,x,4,5,6")


def test_serial_driver_over_a_pty(pty_pair):
    master, path = pty_pair
    driver = imu.SerialImu(path, 115200)
    try:
        # A link plugged in mid-line, a comment, a bad line, and a sample split over two writes.
        os.write(master, b"9,0.01,0.02,0.03\n# imu v1\n0.0,0.0,9.81,0.1,0.2,0.3\nbad,line\n")
        os.write(master, b"1000,0.5,-0.5,9.7,-0.1,")
        got = read_until(driver, 1)
        os.write(master, b"0.0,0.25\r\n")
        got += read_until(driver, 1)
        assert len(got) == 2
        (a, stamp_a), (b, stamp_b) = got
        assert a.accel.tolist() == [0.0, 0.0, 9.81] and a.gyro.tolist() == [0.1, 0.2, 0.3]
        assert b.accel.tolist() == [0.5, -0.5, 9.7] and b.gyro.tolist() == [-0.1, 0.0, 0.25]
        assert stamp_a <= stamp_b <= time.monotonic_ns()
        assert driver.lines.bad == 2  # the partial first line and "bad,line"
    finally:
        driver.close()


class FakeSMBus:
    """The smbus2.SMBus methods the driver uses, over a register file of an MPU-6050."""

    def __init__(self, who_am_i=0x68):
        self.regs = {imu.Mpu6050.WHO_AM_I: who_am_i}
        self.writes = []
        self.closed = False

    def read_byte_data(self, addr, reg):
        assert addr == 0x68
        return self.regs.get(reg, 0)

    def write_byte_data(self, addr, reg, value):
        assert addr == 0x68 and 0 <= value <= 255
        self.writes.append((reg, value))
        self.regs[reg] = value

    def read_i2c_block_data(self, addr, reg, length):
        return [self.regs.get(reg + i, 0) for i in range(length)]

    def set_sample(self, accel_raw, temp_raw, gyro_raw):
        words = list(accel_raw) + [temp_raw] + list(gyro_raw)
        raw = np.array(words, ">i2").tobytes()
        for i, byte in enumerate(raw):
            self.regs[imu.Mpu6050.ACCEL_XOUT_H + i] = byte

    def close(self):
        self.closed = True


def test_mpu6050_configures_and_scales_samples():
    bus = FakeSMBus()
    dev = imu.Mpu6050(bus, 0x68, accel_range_g=4, gyro_range_dps=500, rate_hz=200)
    assert (imu.Mpu6050.PWR_MGMT_1, 0x01) in bus.writes  # out of sleep
    assert bus.regs[imu.Mpu6050.SMPLRT_DIV] == 4  # 1 kHz / (1 + 4) = 200 Hz
    assert bus.regs[imu.Mpu6050.GYRO_CONFIG] == 0x08 and bus.regs[imu.Mpu6050.ACCEL_CONFIG] == 0x08
    # +-4 g: 8192 LSB/g; +-500 deg/s: 65.5 LSB/(deg/s); temperature 0 -> 36.53 C.
    bus.set_sample((8192, -4096, 0), 0, (655, -6550, 0))
    (s, stamp), = dev.read()
    np.testing.assert_allclose(s.accel, [imu.GRAVITY, -imu.GRAVITY / 2, 0.0], rtol=1e-6)
    np.testing.assert_allclose(s.gyro, [math.radians(10), math.radians(-100), 0.0], rtol=1e-3)
    assert s.temp_c == pytest.approx(36.53) and stamp <= time.monotonic_ns()
    dev.close()
    assert bus.closed


def test_mpu6050_wrong_device_is_a_clear_error():
    with pytest.raises(OSError, match="WHO_AM_I=0x12"):
        imu.Mpu6050(FakeSMBus(who_am_i=0x12))


def test_calibration_removes_a_known_gyro_bias():
    bias = (0.03, -0.02, 0.05)
    sim = imu.SimImu(rate_hz=100, gyro_bias=bias, noise=0.002, seed=1)
    raw_mean = np.mean([sim.sample().gyro for _ in range(300)], axis=0)
    assert np.abs(raw_mean - bias).max() < 0.001  # the bias is really there
    calib = imu.Calibrator(200)
    while not calib.done:
        calib.add(sim.sample())
    np.testing.assert_allclose(calib.gyro_bias, bias, atol=0.001)
    corrected = np.mean([calib.correct(sim.sample()).gyro for _ in range(300)], axis=0)
    # Noise 0.002 rad/s over 200 + 300 samples: a residual far below the bias itself.
    assert np.abs(corrected).max() < 0.0008


def test_accel_calibration_assumes_level_and_keeps_gravity():
    sim = imu.SimImu(noise=0.0005, seed=2)
    calib = imu.Calibrator(100, with_accel=True)
    offset = np.array([0.2, -0.1, 0.3])
    while not calib.done:
        s = sim.sample()
        calib.add(imu.Sample(s.accel + offset, s.gyro))
    s = sim.sample()
    out = calib.correct(imu.Sample(s.accel + offset, s.gyro))
    np.testing.assert_allclose(out.accel, [0, 0, imu.GRAVITY], atol=0.02)


def test_sim_sees_the_yaw_rate_and_centripetal_acceleration():
    sim = imu.SimImu(yaw_rate=0.5, speed=0.2, gyro_bias=(0, 0, 0), noise=0.0)
    s = sim.sample()
    assert s.gyro[2] == pytest.approx(0.5) and s.accel[1] == pytest.approx(0.1)
    assert s.to_msg()["gyro"] == [0.0, 0.0, 0.5]


def test_imu_node_on_mpu6050_through_smbus2(monkeypatch):
    """The node opens smbus2.SMBus(i2c_bus) itself: give it the fake bus in its place."""
    import smbus2

    from iotrt.node import Node

    buses = []

    def fake_smbus(n):
        bus = FakeSMBus()
        # Still board, level: 1 g on z; gyro offset of 0.5 deg/s on x (raw 65 at +-250 deg/s).
        bus.set_sample((0, 0, 16384), 0, (65, 0, 0))
        buses.append((n, bus))
        return bus

    monkeypatch.setattr(smbus2, "SMBus", fake_smbus)
    node = Node.for_test(imu, params={"driver": "mpu6050", "i2c_bus": 3, "rate_hz": 100.0,
                                      "calibrate_s": 0.1})
    for _ in range(3):
        node.tick("sample")
    node.run()
    (n, bus), = buses
    assert n == 3 and bus.closed  # the node closes its bus when it ends
    assert len(node.published) == 3
    msg = node.published[0].data
    assert msg["accel"] == pytest.approx([0, 0, imu.GRAVITY], abs=1e-6)
    assert msg["gyro"] == pytest.approx([0, 0, 0], abs=1e-9)  # the 0.5 deg/s offset calibrated out


def test_a_silent_imu_fails_calibration_with_a_clear_error():
    class Silent:
        def read(self):
            return []

    calib = imu.Calibrator(5)
    with pytest.raises(imu.CalibrationError, match="0 of 5 calibration samples"):
        imu.calibrate(Silent(), calib, rate_hz=1000.0, stopped=lambda: False, what="serial",
                      budget_s=0.1)
    assert imu.calibrate(Silent(), imu.Calibrator(5), 1000.0, stopped=lambda: True, what="x") is False


@pytest.mark.parametrize("line", ["nan,0,0,0,0,0", "0,0,9.8,inf,0,0", "0,0,9.8,0,-inf,0"])
def test_non_finite_numbers_are_bad_lines_not_samples(line):
    from iotrt.nodes.sensing.serial_lines import BadLine, parse_floats

    with pytest.raises(BadLine, match="finite"):
        parse_floats(line, (6, 7), "imu")
