"""The camera's capture code on a real video file written here with cv2.VideoWriter, its
reconnect policy, and the sim source."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from iotrt.nodes.sensing.camera import SOURCES, SPEC, Camera, CameraConfig, EndOfStream, SourceError

N_FRAMES = 12


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """An MJPG .avi of 12 frames, 160x120 at 30 fps; frame i is a flat colour whose blue
    channel (BGR order, as OpenCV writes) is 20 * i and whose red channel is 200."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (160, 120))
    assert writer.isOpened(), "this OpenCV cannot write MJPG"
    for i in range(N_FRAMES):
        writer.write(np.full((120, 160, 3), (20 * i, 90, 200), np.uint8))
    writer.release()
    return path


def frame_index(frame: np.ndarray) -> int:
    return round(float(frame[..., 2].mean()) / 20)  # blue is the third channel in RGB


def test_file_frames_in_order_rgb_and_looping(video):
    cam = Camera(CameraConfig(source="file", uri=str(video), width=160, height=120, loop=True))
    indices, stamps = [], []
    for _ in range(N_FRAMES + 3):
        frame, stamp = cam.grab()
        assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8
        indices.append(frame_index(frame))
        stamps.append(stamp)
    assert indices == list(range(N_FRAMES)) + [0, 1, 2]
    first = cam.grab()[0]
    assert abs(int(first[..., 0].mean()) - 200) < 6  # red really is red: BGR was converted
    assert stamps == sorted(stamps) and stamps[-1] <= time.monotonic_ns()
    cam.close()


def test_file_without_loop_ends(video):
    cam = Camera(CameraConfig(source="file", uri=str(video), width=160, height=120, loop=False))
    for _ in range(N_FRAMES):
        assert cam.grab() is not None
    with pytest.raises(EndOfStream):
        cam.grab()


def test_frames_are_resized_to_the_configured_size(video):
    cam = Camera(CameraConfig(source="file", uri=str(video), width=64, height=48))
    assert cam.grab()[0].shape == (48, 64, 3)


def test_file_rate_from_the_file_when_fps_is_zero(video):
    cam = Camera(CameraConfig(source="file", uri=str(video), fps=0.0))
    cam.open()
    assert cam.frame_period() == pytest.approx(1 / 30, rel=0.01)
    live = Camera(CameraConfig(source="url", uri="rtsp://camera.invalid/stream", fps=25.0))
    assert live.frame_period() == pytest.approx(1 / 50)  # live: tick at twice the frame rate


def test_missing_source_backs_off_then_recovers(tmp_path, video):
    now = [100.0]
    missing = tmp_path / "later.avi"
    cam = Camera(CameraConfig(source="file", uri=str(missing)), clock=lambda: now[0])
    assert cam.grab() is None and cam.failures == 1 and cam.retry_at == pytest.approx(100.5)
    now[0] = 100.2
    assert cam.grab() is None and cam.failures == 1  # still waiting: no reopen attempt
    now[0] = 100.6
    assert cam.grab() is None and cam.failures == 2 and cam.retry_at == pytest.approx(101.6)
    missing.write_bytes(video.read_bytes())  # the source comes back
    now[0] = 102.0
    assert cam.grab() is not None and cam.failures == 0


def test_backoff_is_capped():
    now = [0.0]
    cam = Camera(CameraConfig(source="device", uri="/dev/video99", reconnect_max_s=3.0),
                 clock=lambda: now[0])
    delays = []
    for _ in range(6):
        cam.grab()
        delays.append(cam.retry_at - now[0])
        now[0] = cam.retry_at
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_gstreamer_without_support_says_so():
    with pytest.raises(SourceError, match="GStreamer"):
        SOURCES["gstreamer"](CameraConfig(source="gstreamer", uri="videotestsrc ! appsink"))


def test_config_errors_name_the_parameter():
    with pytest.raises(ValueError, match="'uri'"):
        CameraConfig.from_params({"source": "file", "uri": ""})
    with pytest.raises(ValueError, match="width and height"):
        CameraConfig.from_params({"source": "sim", "width": 0})


@pytest.mark.parametrize("params, why", [
    ({"fps": 1.0e-300}, "fps must be 0 .* or 1.16e-05 .* to 240"),
    ({"fps": 6e23}, "fps must be 0 .* or 1.16e-05 .* to 240"),
    ({"fps": float("nan")}, "fps must be 0 .* or 1.16e-05 .* to 240"),
    ({"width": 99999999}, "width and height must be 1..7680"),
    ({"height": 4321}, "width and height must be 1..7680"),
])
def test_absurd_sizes_and_rates_are_refused_before_any_frame(params, why):
    with pytest.raises(ValueError, match=why):
        CameraConfig.from_params({"source": "sim", **params})


@pytest.mark.parametrize("params", [{"fps": 6e23}, {"width": 99999999}, {"height": 4321}])
def test_the_graph_check_refuses_sizes_and_rates_above_the_maximum(params):
    problems = SPEC.check_params({"source": "sim", **params})[1]
    assert [p.param for p in problems] == list(params)


@pytest.mark.parametrize("fps", [0.0167, 1 / 86400, 0.05, 240.0, 0.0])
def test_a_rate_the_graph_check_accepts_is_one_the_camera_starts_with(fps):
    """A frame a minute (a timelapse) down to a frame a day: validate said OK and the camera
    then refused to start (below 0.1 fps), a crash loop with no file:line."""
    assert SPEC.check_params({"source": "sim", "fps": fps})[1] == []
    cam = Camera(CameraConfig.from_params({"source": "sim", "fps": fps}))
    cam.open()
    period = cam.frame_period()
    assert 0 < period <= 86400.0            # what node.timer schedules
    if fps:
        assert period == pytest.approx(1 / fps)


@pytest.mark.parametrize("fps", [1e-6, 1 / 86401, 1e-300, 240.5])
def test_a_rate_the_camera_refuses_the_graph_check_refuses_at_its_line(tmp_path, fps):
    from iotrt.graph import GraphError, load_graph

    path = tmp_path / "g.yaml"
    path.write_text(f"name: g\nnodes:\n  - id: cam\n    kind: camera\n    params:\n"
                    f"      source: sim\n      fps: {fps:.17e}\n")   # YAML floats need a dot
    with pytest.raises(ValueError, match="fps"):
        CameraConfig.from_params({"source": "sim", "fps": fps})
    with pytest.raises(GraphError) as err:
        load_graph(path)
    assert f"{path}:7" in str(err.value) and "params.fps: must be" in str(err.value)


@pytest.mark.parametrize("native, said", [
    (1e-300, "says 1e-300 fps, outside 1.16e-05 to 240"),
    (90000.0, "says 90000 fps, outside"),
    (float("nan"), "says nan fps, outside"),
    (0.0, "gives no frame rate"),
])
def test_a_file_rate_outside_the_range_plays_at_30_fps_and_says_so(video, caplog, native, said):
    import logging

    log = logging.getLogger("test.camera")
    cam = Camera(CameraConfig(source="file", uri=str(video), fps=0.0), log)
    cam.open()
    cam.source.native_fps = lambda: native
    with caplog.at_level(logging.WARNING, logger="test.camera"):
        assert cam.frame_period() == pytest.approx(1 / 30)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and said in lines[0] and "playing at 30 fps" in lines[0], lines
    cam.close()


def test_a_slow_file_plays_at_its_own_rate(video):
    cam = Camera(CameraConfig(source="file", uri=str(video), fps=0.0))
    cam.open()
    cam.source.native_fps = lambda: 1 / 60    # a timelapse file: a frame a minute
    assert cam.frame_period() == pytest.approx(60.0)
    cam.close()


def test_sim_source_renders_the_configured_size():
    cam = Camera(CameraConfig(source="sim", width=320, height=240))
    frame, stamp = cam.grab()
    assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8 and stamp > 0


def test_auto_source_uses_a_camera_when_there_is_one_else_says_sim():
    from iotrt.nodes.sensing.camera import resolve_source

    cfg, line = resolve_source(CameraConfig(source="auto"), devices=["/dev/video2", "/dev/video3"])
    assert (cfg.source, cfg.uri) == ("device", "/dev/video2")
    assert "SIMULATED" not in line
    cfg, line = resolve_source(CameraConfig(source="auto", uri="/dev/video3"), devices=["/dev/video2"])
    assert cfg.uri == "/dev/video3"                       # an explicit device wins
    cfg, line = resolve_source(CameraConfig(source="auto"), devices=[])
    assert cfg.source == "sim" and "SIMULATED" in line and "no camera device" in line
    cfg, line = resolve_source(CameraConfig(source="sim"), devices=["/dev/video0"])
    assert cfg.source == "sim" and "SIMULATED" in line     # sim asked for: sim, even with a camera


def test_a_file_not_there_yet_plays_at_30_fps_and_says_why(tmp_path, caplog):
    import logging

    cam = Camera(CameraConfig(source="file", uri=str(tmp_path / "later.avi"), fps=0.0),
                 logging.getLogger("test.camera"))
    cam.open()                                   # missing: backs off, no source yet
    with caplog.at_level(logging.WARNING, logger="test.camera"):
        assert cam.frame_period() == pytest.approx(1 / 30)
    assert any("is not open yet" in r.getMessage() and "playing at 30 fps" in r.getMessage()
               for r in caplog.records)
