"""Camera node: frames from OpenCV capture (device, file, URL, GStreamer) or a simulated scene.

Frames go out on `image` as RGB uint8 arrays (H, W, 3); the bus moves big arrays through shared
memory. `stamp_ns` is `time.monotonic_ns()` taken right after the frame was grabbed, so every
node downstream can compute its latency from capture.

The loop is driven by a timer: for file and sim sources the timer is the frame clock; for live
sources (device, url, gstreamer) it ticks at twice the frame rate and `read()` blocks until the
device delivers, so the node always publishes the newest frame instead of draining a backlog.
A source that fails (unplugged camera, dropped stream) is closed and reopened with exponential
backoff, without blocking the node's loop, so heartbeats keep flowing while it waits.
"""

from __future__ import annotations

import glob
import time
from dataclasses import dataclass, replace
from pathlib import Path

from iotrt import errors
from iotrt.lazy import LazyModule
from iotrt.lazy import numpy as np
from iotrt.node import MAX_TIMER_S, Node, NodeSpec, Param
from iotrt.nodes.sensing.scene import DoorScene

# OpenCV and numpy load when a source opens (the node's start), not when a graph's SPECs are read.
cv2 = LazyModule("cv2")

# Bounds a frame buffer and the frame timer can live with: 8K UHD, and from a frame a day (the
# longest period node.timer schedules: a timelapse of a frame a minute is 0.0167 fps) to 240 a
# second. A rate outside this, from the graph or from a file's header, is a mistake (1e-300 fps
# once overflowed the timer, 99999999 pixels wide asked for 536 GiB).
MAX_WIDTH, MAX_HEIGHT = 7680, 4320
MIN_FPS, MAX_FPS = 1 / MAX_TIMER_S, 240.0
DEFAULT_FPS = 30.0   # a source that gives no usable rate of its own plays at this


def fps_problem(fps: float) -> str | None:
    """Why `fps` is not a rate the camera runs at, or None: 0 (a source's own rate) or
    MIN_FPS to MAX_FPS. The graph check (the fps Param's `check`) and CameraConfig both ask
    this, so a value `iotrt validate` accepts is one the camera starts with."""
    if fps == 0 or MIN_FPS <= fps <= MAX_FPS:   # NaN fails both
        return None
    return (f"must be 0 (a file's own rate) or {MIN_FPS:.3g} (a frame a day) to "
            f"{MAX_FPS:g}, got {fps!r}")



SPEC = NodeSpec(
    doc="camera frames (RGB uint8) from a device, video file, URL, GStreamer pipeline or sim",
    inputs={},
    outputs={"image": "RGB uint8 frame (H, W, 3); stamp_ns = capture time"},
    params=[
        Param("source", str, "auto", "where frames come from (auto: the first camera device "
                                     "if there is one, else sim; both refused in a graph "
                                     "that drives real hardware)",
              choices=("auto", "sim", "device", "file", "url", "gstreamer")),
        Param("uri", str, "", "device index or /dev/videoN, file path, stream URL, or pipeline"),
        Param("width", int, 640, "frame width (requested from devices, resized to otherwise)",
              min=1, max=MAX_WIDTH),
        Param("height", int, 480, "frame height", min=1, max=MAX_HEIGHT),
        Param("fps", float, 30.0, f"frame rate, {MIN_FPS:.3g} (a frame a day) to {MAX_FPS:g} "
                                  f"(0 for a file: the file's own rate)",
              min=0.0, max=MAX_FPS, check=fps_problem),
        Param("loop", bool, True, "restart a video file at its end"),
        Param("reconnect_max_s", float, 10.0, "longest wait between reopen attempts", min=0.5),
        Param("sim_period_s", float, 12.0, "sim: length of the scene's owner/visitor cycle",
              min=1.0),
    ],
    simulated=lambda p: p["source"] in ("sim", "auto"),   # auto falls back to sim
)


class SourceError(errors.DeviceError, RuntimeError):
    """A capture source cannot be opened; the message says which and why."""


class EndOfStream(Exception):
    """A non-looping file has no more frames."""


@dataclass(frozen=True)
class CameraConfig:
    source: str = "sim"
    uri: str = ""
    width: int = 640
    height: int = 480
    fps: float = 30.0
    loop: bool = True
    reconnect_max_s: float = 10.0
    sim_period_s: float = 12.0

    @classmethod
    def from_params(cls, params: dict) -> CameraConfig:
        cfg = cls(**{k: params[k] for k in cls.__dataclass_fields__ if k in params})
        if not (0 < cfg.width <= MAX_WIDTH and 0 < cfg.height <= MAX_HEIGHT):
            raise ValueError(f"camera: width and height must be 1..{MAX_WIDTH} and "
                             f"1..{MAX_HEIGHT}, got {cfg.width}x{cfg.height}")
        problem = fps_problem(cfg.fps)
        if problem:
            raise ValueError(f"camera: fps {problem}")
        if cfg.source in ("file", "url", "gstreamer") and not cfg.uri:
            raise ValueError(f"camera: source '{cfg.source}' needs the 'uri' parameter")
        return cfg

    @property
    def live(self) -> bool:
        return self.source in ("device", "url", "gstreamer")


def resolve_source(cfg: CameraConfig, devices: list[str] | None = None) -> tuple[CameraConfig, str]:
    """Settle `source: auto` and say, in one log line, what the camera will show.

    auto: the first /dev/video* device if the machine has one, else the simulated doorstep,
    so the same graph runs on a desk and on the device."""
    if cfg.source == "auto":
        devices = sorted(glob.glob("/dev/video*")) if devices is None else devices
        if devices:
            cfg = replace(cfg, source="device", uri=cfg.uri or devices[0])
        else:
            return (replace(cfg, source="sim"),
                    "camera: no camera device found (/dev/video*): showing the SIMULATED "
                    "doorstep; set source: device (CAMERA_SOURCE=device) to require a camera")
    if cfg.source == "sim":
        return cfg, (f"camera: showing the SIMULATED doorstep ({cfg.width}x{cfg.height} @ "
                     f"{cfg.fps:g} fps); set source: device (CAMERA_SOURCE=device) for a camera")
    return cfg, (f"camera: {cfg.source} '{cfg.uri or 0}' at {cfg.width}x{cfg.height} "
                 f"@ {cfg.fps:g} fps")


class SimSource:
    """The simulated doorstep (see scene.py); time starts when the source opens."""

    def __init__(self, cfg: CameraConfig):
        self.scene = DoorScene(cfg.width, cfg.height, cfg.sim_period_s)
        self.t0 = time.monotonic()

    def read(self) -> np.ndarray:
        return self.scene.render(time.monotonic() - self.t0)

    def native_fps(self) -> float:
        return 0.0

    def close(self) -> None:
        pass


class CvSource:
    """cv2.VideoCapture for devices, files, URLs and GStreamer pipelines."""

    def __init__(self, cfg: CameraConfig):
        self.cfg = cfg
        if cfg.source == "device":
            uri = cfg.uri or "0"
            target, api = (int(uri), cv2.CAP_ANY) if uri.isdigit() else (uri, cv2.CAP_V4L2)
        elif cfg.source == "file":
            if not Path(cfg.uri).is_file():
                raise SourceError(f"camera: video file not found: {cfg.uri}")
            target, api = cfg.uri, cv2.CAP_ANY
        elif cfg.source == "url":
            target, api = cfg.uri, cv2.CAP_FFMPEG
        else:
            if "GStreamer:                   YES" not in cv2.getBuildInformation():
                raise SourceError(
                    "camera: this OpenCV build has no GStreamer support (opencv-python wheels "
                    "ship without it); use a system OpenCV built with GStreamer, or "
                    "source: device/url"
                )
            target, api = cfg.uri, cv2.CAP_GSTREAMER
        self.cap = cv2.VideoCapture(target, api)
        if not self.cap.isOpened():
            raise SourceError(f"camera: cannot open {cfg.source} '{target}'")
        if cfg.source == "device":
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
            if cfg.fps:
                self.cap.set(cv2.CAP_PROP_FPS, cfg.fps)
            # One driver buffer: a frame read is the newest one, not one from a backlog.
            self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)

    def native_fps(self) -> float:
        return float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        if not ok and self.cfg.source == "file":
            if not self.cfg.loop:
                raise EndOfStream(self.cfg.uri)
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
        if not ok:
            return None
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        else:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if frame.shape[1] != self.cfg.width or frame.shape[0] != self.cfg.height:
            frame = cv2.resize(frame, (self.cfg.width, self.cfg.height), interpolation=cv2.INTER_AREA)
        return frame

    def close(self) -> None:
        self.cap.release()


# source name -> class. Adding a source means adding a class with read/native_fps/close.
SOURCES: dict[str, type] = {
    "sim": SimSource,
    "device": CvSource,
    "file": CvSource,
    "url": CvSource,
    "gstreamer": CvSource,
}


class Camera:
    """A source plus the reconnect policy: `grab()` -> (frame, stamp_ns) or None.

    Never blocks on a dead source: while backing off it returns None at once.
    """

    def __init__(self, cfg: CameraConfig, log=None, clock=time.monotonic):
        self.cfg, self.log, self.clock = cfg, log, clock
        self.source = None
        self.failures = 0
        self.retry_at = 0.0
        self.frames = 0

    def _backoff(self, why: str) -> None:
        delay = min(self.cfg.reconnect_max_s, 0.5 * 2 ** min(self.failures, 32))
        self.failures += 1
        self.retry_at = self.clock() + delay
        if self.log:
            self.log.warning("%s; retrying in %.1f s", why, delay)

    def open(self) -> bool:
        try:
            self.source = SOURCES[self.cfg.source](self.cfg)
        except SourceError as exc:
            self._backoff(str(exc))
            return False
        return True

    def grab(self) -> tuple[np.ndarray, int] | None:
        if self.source is None:
            if self.clock() < self.retry_at or not self.open():
                return None
        frame = self.source.read()
        stamp = time.monotonic_ns()
        if frame is None:
            self.source.close()
            self.source = None
            self._backoff(f"camera: {self.cfg.source} '{self.cfg.uri}' stopped delivering frames")
            return None
        if self.failures and self.log:
            self.log.info("camera: %s '%s' delivering again", self.cfg.source, self.cfg.uri)
        self.failures = 0
        self.frames += 1
        return frame, stamp

    def frame_rate(self) -> float:
        """The configured rate; with fps 0, the source's own. A source's rate that is unknown
        (0) or outside MIN_FPS..MAX_FPS plays at DEFAULT_FPS, said in one log line: such header
        rates are container timebases (1000, 90000) or corrupt, not the rate the video was
        shot at, so the nearest bound would be no better a guess than the common one."""
        if self.cfg.fps:
            return self.cfg.fps
        native = self.source.native_fps() if self.source is not None else 0.0
        if MIN_FPS <= native <= MAX_FPS:
            return native
        if self.log:
            said = ("is not open yet, so its rate is unknown" if self.source is None
                    else "gives no frame rate" if not native   # NaN is not 0: it is "outside"
                    else f"says {native:g} fps, outside {MIN_FPS:.3g} to {MAX_FPS:g}")
            self.log.warning("camera: %s '%s' %s: playing at %g fps (set the fps param to "
                             "choose the rate)", self.cfg.source, self.cfg.uri, said, DEFAULT_FPS)
        return DEFAULT_FPS

    def frame_period(self) -> float:
        fps = self.frame_rate()
        # Live sources pace themselves (read blocks); tick faster so we never fall behind.
        return 1.0 / (2 * fps) if self.cfg.live else 1.0 / fps

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None


def main(node: Node) -> None:
    cfg, what = resolve_source(CameraConfig.from_params(node.params))
    # simulated frames are said loudly (a graph that drives real hardware never gets here
    # with sim or auto: validation refuses it, see SPEC.simulated)
    (node.log.warning if cfg.source == "sim" else node.log.info)(what)
    camera = Camera(cfg, node.log)
    camera.open()
    node.timer("frame", camera.frame_period())
    node.ready()
    try:
        for event in node:
            if event.kind != "timer":
                continue
            try:
                got = camera.grab()
            except EndOfStream:
                node.log.info("camera: end of %s after %d frames", cfg.uri, camera.frames)
                return
            if got is not None:
                node.publish("image", got[0], stamp_ns=got[1])
    finally:
        camera.close()
