"""Pose node: wheel odometry fused with the IMU gyro into one planar pose.

Wheels measure distance well but heading badly (a wheel that slips or a tyre that is a little
smaller turns the estimate); a calibrated gyro measures heading changes well over seconds but
drifts over minutes. The complementary filter here takes the distance from odometry and the
heading change of each step as a weighted blend of both:

    dtheta = w * dtheta_gyro + (1 - w) * dtheta_odom         (w = gyro_weight, default 0.9)

and integrates the exact arc. When no IMU sample has arrived for `imu_timeout_s`, the step uses
odometry alone (w = 0), so a dead IMU degrades the pose instead of freezing it.

Inputs: `odom` (the odometry node's `{s, theta, ...}`) and `imu` (`{gyro: [gx, gy, gz]}`, yaw
rate = gz, board mounted flat). Output `pose`: `{"x", "y", "theta", "v", "omega", "source"}`
with source "fused" or "odometry".
"""

from __future__ import annotations

from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.sensing.odometry import arc_step, wrap_angle

SPEC = NodeSpec(
    doc="planar pose from wheel odometry fused with the IMU gyro (complementary filter)",
    inputs={"odom": "odometry {s, theta}", "imu": "IMU {gyro}"},
    outputs={"pose": "{x, y, theta, v, omega, source}"},
    params=[
        Param("gyro_weight", float, 0.9, "share of each heading change taken from the gyro",
              min=0.0, max=1.0),
        Param("imu_timeout_s", float, 0.2, "after this long without IMU samples, odometry alone",
              min=0.0),
    ],
)


class PoseFilter:
    def __init__(self, gyro_weight: float = 0.9, imu_timeout_s: float = 0.2):
        if not 0.0 <= gyro_weight <= 1.0:
            raise ValueError(f"pose: gyro_weight must be within 0..1, got {gyro_weight}")
        self.w, self.timeout_ns = gyro_weight, int(imu_timeout_s * 1e9)
        self.x = self.y = self.theta = 0.0
        self.v = self.omega = 0.0
        self.gyro_dtheta = 0.0  # yaw integrated from the gyro since the last odometry step
        self.imu_t: int | None = None
        self.imu_rate = 0.0
        self.odom_last: tuple[float, float, int] | None = None  # s, theta_odom, t_ns

    def on_imu(self, yaw_rate: float, t_ns: int) -> None:
        if self.imu_t is not None and t_ns > self.imu_t:
            # Trapezoid between samples: exact for a yaw rate that changes linearly.
            self.gyro_dtheta += 0.5 * (yaw_rate + self.imu_rate) * (t_ns - self.imu_t) / 1e9
        self.imu_t, self.imu_rate = t_ns, yaw_rate

    def on_odom(self, s: float, theta_odom: float, t_ns: int) -> dict:
        if self.odom_last is None:
            self.odom_last = (s, theta_odom, t_ns)
            self.gyro_dtheta = 0.0
            return self.state("odometry")
        s0, th0, t0 = self.odom_last
        ds, dth_odom = s - s0, wrap_angle(theta_odom - th0)
        fresh = self.imu_t is not None and t_ns - self.imu_t <= self.timeout_ns
        if fresh:
            # Bring the gyro integral up to the odometry stamp with the latest rate.
            dth_gyro = self.gyro_dtheta + self.imu_rate * (t_ns - self.imu_t) / 1e9
            dtheta = self.w * dth_gyro + (1 - self.w) * dth_odom
            self.gyro_dtheta = -self.imu_rate * (t_ns - self.imu_t) / 1e9
        else:
            dtheta = dth_odom
            self.gyro_dtheta = 0.0
        self.x, self.y = arc_step(self.x, self.y, self.theta, ds, dtheta)
        self.theta += dtheta
        dt = (t_ns - t0) / 1e9
        if dt > 0:
            self.v, self.omega = ds / dt, dtheta / dt
        self.odom_last = (s, theta_odom, t_ns)
        return self.state("fused" if fresh else "odometry")

    def state(self, source: str) -> dict:
        return {"x": self.x, "y": self.y, "theta": wrap_angle(self.theta),
                "v": self.v, "omega": self.omega, "source": source}


def main(node: Node) -> None:
    filt = PoseFilter(node.params["gyro_weight"], node.params["imu_timeout_s"])
    node.ready()
    bad = 0
    for event in node:
        if event.kind != "input":
            continue
        msg, stamp = event.data, event.stamp_ns
        try:
            if event.input == "imu":
                filt.on_imu(float(msg["gyro"][2]), stamp)
            elif event.input == "odom":
                node.publish("pose", filt.on_odom(float(msg["s"]), float(msg["theta"]), stamp))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            # A message without the documented fields: skip it, keep the pose going.
            bad += 1
            if bad == 1 or bad % 100 == 0:
                node.log.warning("pose: skipped %d malformed %s message(s): %r", bad, event.input, exc)
