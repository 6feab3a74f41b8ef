"""IMU node: accelerometer + gyroscope at 100-200 Hz from serial, an I2C MPU-6050, or a sim.

Output `imu`: `{"accel": [ax, ay, az] (m/s^2), "gyro": [gx, gy, gz] (rad/s), "temp_c": float|None}`
in the sensor's frame, bias-corrected, `stamp_ns` = monotonic time the sample was read.

Start-up calibration: for `calibrate_s` seconds the board must be still; the mean gyro reading
is its bias (and, with `calibrate_accel`, the mean accelerometer reading minus 1 g along +z,
which assumes the board is level). The node reports ready only after calibration.

Serial line format (one sample per line, ASCII, comma-separated, `#` starts a comment line):
    ax,ay,az,gx,gy,gz            m/s^2 and rad/s
    t_us,ax,ay,az,gx,gy,gz       optional leading device time in microseconds (ignored: the
                                 host stamps samples with its monotonic clock)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from iotrt import errors
from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.sensing.serial_lines import SerialLines, parse_floats

GRAVITY = 9.80665

SPEC = NodeSpec(
    doc="IMU samples (accel m/s^2, gyro rad/s) from serial, I2C MPU-6050 or sim, bias-calibrated",
    inputs={},
    outputs={"imu": "{accel: [3], gyro: [3], temp_c}"},
    params=[
        Param("driver", str, "sim", "sample source", choices=("sim", "serial", "mpu6050")),
        Param("rate_hz", float, 100.0, "sample rate (100-200 Hz typical)", min=1.0, max=1000.0),
        Param("port", str, "/dev/ttyUSB0", "serial: port"),
        Param("baud", int, 115200, "serial: baud rate"),
        Param("i2c_bus", int, 1, "mpu6050: I2C bus number (/dev/i2c-N)"),
        Param("i2c_address", int, 0x68, "mpu6050: address (0x68, or 0x69 with AD0 high)"),
        Param("accel_range_g", int, 2, "mpu6050: accelerometer range", choices=(2, 4, 8, 16)),
        Param("gyro_range_dps", int, 250, "mpu6050: gyro range", choices=(250, 500, 1000, 2000)),
        Param("calibrate_s", float, 2.0, "still time at start-up to measure bias (0: off)",
              min=0.0),
        Param("calibrate_accel", bool, False, "also remove accel bias (board must be level)"),
        Param("sim_yaw_rate", float, 0.0, "sim: true yaw rate in rad/s"),
        Param("sim_speed", float, 0.0, "sim: forward speed in m/s (for centripetal accel)"),
        Param("sim_gyro_bias", list, [0.01, -0.02, 0.015], "sim: gyro bias in rad/s"),
        Param("sim_noise", float, 0.002, "sim: gyro noise std in rad/s (accel: 10x in m/s^2)"),
        Param("sim_start_s", float, 2.5, "sim: still this long before moving (odometry: same)",
              min=0.0),
    ],
    simulated=lambda p: p["driver"] == "sim",
)


@dataclass
class Sample:
    accel: np.ndarray  # (3,) m/s^2
    gyro: np.ndarray  # (3,) rad/s
    temp_c: float | None = None

    def to_msg(self) -> dict:
        return {
            "accel": [float(v) for v in self.accel],
            "gyro": [float(v) for v in self.gyro],
            "temp_c": self.temp_c,
        }


def parse_line(line: str) -> Sample:
    v = parse_floats(line, (6, 7), "imu line")
    v = v[-6:]
    return Sample(np.array(v[:3]), np.array(v[3:]))


class SerialImu:
    def __init__(self, port: str, baud: int, log=None, serial_factory=None):
        self.lines = SerialLines(port, baud, parse_line, log, serial_factory)

    def read(self) -> list[tuple[Sample, int]]:
        return self.lines.samples()

    def close(self) -> None:
        self.lines.close()


class Mpu6050:
    """InvenSense MPU-6050 over I2C with the smbus2 API (`SMBus(n)` or any object like it)."""

    WHO_AM_I, PWR_MGMT_1, SMPLRT_DIV, CONFIG = 0x75, 0x6B, 0x19, 0x1A
    GYRO_CONFIG, ACCEL_CONFIG, ACCEL_XOUT_H = 0x1B, 0x1C, 0x3B
    ACCEL_FS = {2: 0, 4: 1, 8: 2, 16: 3}  # range in g -> AFS_SEL
    GYRO_FS = {250: 0, 500: 1, 1000: 2, 2000: 3}  # range in deg/s -> FS_SEL

    def __init__(self, bus, address: int = 0x68, accel_range_g: int = 2,
                 gyro_range_dps: int = 250, rate_hz: float = 100.0):
        self.bus, self.address = bus, address
        who = bus.read_byte_data(address, self.WHO_AM_I)
        if who not in (0x68, 0x98):  # 0x98: the MPU-6500 family answers the same registers
            raise OSError(f"mpu6050: device at 0x{address:02x} answered WHO_AM_I=0x{who:02x}, not 0x68")
        bus.write_byte_data(address, self.PWR_MGMT_1, 0x01)  # wake, clock from gyro X PLL
        bus.write_byte_data(address, self.CONFIG, 0x03)  # DLPF 44 Hz: 1 kHz internal rate
        bus.write_byte_data(address, self.SMPLRT_DIV, max(0, min(255, round(1000 / rate_hz) - 1)))
        bus.write_byte_data(address, self.GYRO_CONFIG, self.GYRO_FS[gyro_range_dps] << 3)
        bus.write_byte_data(address, self.ACCEL_CONFIG, self.ACCEL_FS[accel_range_g] << 3)
        self.accel_scale = GRAVITY * accel_range_g / 32768.0
        self.gyro_scale = math.radians(gyro_range_dps) / 32768.0

    def read(self) -> list[tuple[Sample, int]]:
        raw = bytes(self.bus.read_i2c_block_data(self.address, self.ACCEL_XOUT_H, 14))
        stamp = time.monotonic_ns()
        v = np.frombuffer(raw, ">i2").astype(np.float64)  # ax ay az temp gx gy gz, big-endian
        temp_c = v[3] / 340.0 + 36.53  # datasheet formula
        return [(Sample(v[0:3] * self.accel_scale, v[4:7] * self.gyro_scale, temp_c), stamp)]

    def close(self) -> None:
        self.bus.close()


@dataclass
class SimImu:
    """A board that stands still for `start_s` (time to calibrate, as on a real robot), then
    moves at constant speed and yaw rate; gyro bias and white noise throughout."""

    rate_hz: float = 100.0
    yaw_rate: float = 0.0
    speed: float = 0.0
    gyro_bias: tuple[float, float, float] = (0.01, -0.02, 0.015)
    noise: float = 0.002
    start_s: float = 0.0
    seed: int = 0
    rng: np.random.Generator = field(init=False)
    t0: int = field(init=False)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)
        self.t0 = time.monotonic_ns()

    def sample(self, t_s: float | None = None) -> Sample:
        """The sample at `t_s` seconds after start (None: moving)."""
        moving = t_s is None or t_s >= self.start_s
        yaw, speed = (self.yaw_rate, self.speed) if moving else (0.0, 0.0)
        gyro = np.array([0.0, 0.0, yaw]) + self.gyro_bias
        accel = np.array([0.0, speed * yaw, GRAVITY])  # centripetal + gravity
        return Sample(accel + self.rng.normal(0, self.noise * 10, 3),
                      gyro + self.rng.normal(0, self.noise, 3))

    def read(self) -> list[tuple[Sample, int]]:
        now = time.monotonic_ns()
        return [(self.sample((now - self.t0) / 1e9), now)]

    def close(self) -> None:
        pass


class Calibrator:
    """Mean of still samples -> bias. `add()` until `done`, then `correct()` each sample."""

    def __init__(self, n_samples: int, with_accel: bool = False):
        self.n, self.with_accel = n_samples, with_accel
        self.gyro_sum, self.accel_sum, self.count = np.zeros(3), np.zeros(3), 0
        self.gyro_bias, self.accel_bias = np.zeros(3), np.zeros(3)

    @property
    def done(self) -> bool:
        return self.count >= self.n

    def add(self, s: Sample) -> None:
        self.gyro_sum += s.gyro
        self.accel_sum += s.accel
        self.count += 1
        if self.done:
            self.gyro_bias = self.gyro_sum / self.count
            if self.with_accel:
                self.accel_bias = self.accel_sum / self.count - np.array([0.0, 0.0, GRAVITY])

    def correct(self, s: Sample) -> Sample:
        return Sample(s.accel - self.accel_bias, s.gyro - self.gyro_bias, s.temp_c)


def open_driver(p: dict, log=None):
    if p["driver"] == "serial":
        return SerialImu(p["port"], p["baud"], log)
    if p["driver"] == "mpu6050":
        import smbus2  # the 'hardware' extra

        return Mpu6050(smbus2.SMBus(p["i2c_bus"]), p["i2c_address"], p["accel_range_g"],
                       p["gyro_range_dps"], p["rate_hz"])
    return SimImu(p["rate_hz"], p["sim_yaw_rate"], p["sim_speed"], tuple(p["sim_gyro_bias"]),
                  p["sim_noise"], p["sim_start_s"])


class CalibrationError(errors.DeviceError, RuntimeError):
    """The IMU delivered too few samples to calibrate; the message names the driver."""


def calibrate(driver, calib: Calibrator, rate_hz: float, stopped, what: str,
              budget_s: float | None = None) -> bool:
    """Read samples at `rate_hz` until `calib` is done. Runs before the event loop because the
    loop's first turn reports the node ready, and a node must not be ready before its bias is
    known. Returns False if a stop was requested meanwhile."""
    period = 1.0 / rate_hz
    if budget_s is None:
        budget_s = 2.0 * calib.n * period + 5.0  # a silent serial link must not hang start-up
    deadline = time.monotonic() + budget_s
    next_t = time.monotonic()
    while not calib.done:
        if stopped():
            return False
        if time.monotonic() > deadline:
            raise CalibrationError(f"imu: {what} gave {calib.count} of {calib.n} calibration "
                                   f"samples in {budget_s:.1f} s; is it connected and sending?")
        for sample, _ in driver.read():
            calib.add(sample)
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))  # pacing the reads, not waiting on a test
    return True


def main(node: Node) -> None:
    p = node.params
    driver = open_driver(p, node.log)
    calib = Calibrator(round(p["calibrate_s"] * p["rate_hz"]), p["calibrate_accel"])
    try:
        if not calibrate(driver, calib, p["rate_hz"], lambda: node.stop_requested, p["driver"]):
            return
        if calib.n:
            node.log.info("imu: gyro bias %s rad/s", np.round(calib.gyro_bias, 5).tolist())
        node.timer("sample", 1.0 / p["rate_hz"])
        node.ready()
        for event in node:
            if event.kind != "timer":
                continue
            for sample, stamp in driver.read():
                node.publish("imu", calib.correct(sample).to_msg(), stamp_ns=stamp)
    finally:
        driver.close()
