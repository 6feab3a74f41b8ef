"""Each node's main(node) through the Node.for_test harness: what it publishes, on which
output, with which stamp, given inputs and timer ticks (no sockets, no processes)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from iotrt.node import Node, ParamError
from iotrt.nodes.perception import detector, identity, pose
from iotrt.nodes.perception.gallery import Gallery, GalleryError
from iotrt.nodes.perception.matcher import lbp_extractor
from iotrt.nodes.sensing import camera, imu, odometry
from iotrt.nodes.sensing.scene import DoorScene


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Compiled models go to a temporary cache, not the user's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_camera_publishes_a_stamped_rgb_frame_per_tick():
    node = Node.for_test(camera, params={"source": "sim", "width": 320, "height": 240})
    for _ in range(3):
        node.tick("frame")
    node.run()
    assert [p.output for p in node.published] == ["image"] * 3
    stamps = [p.envelope.stamp_ns for p in node.published]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    frame = node.published[0].data
    assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8


def test_camera_node_plays_a_video_file_and_stops_at_its_end(tmp_path):
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (160, 120))
    for i in range(5):
        writer.write(np.full((120, 160, 3), 40 * i, np.uint8))
    writer.release()
    node = Node.for_test(camera, params={"source": "file", "uri": str(path), "loop": False,
                                         "width": 160, "height": 120})
    for _ in range(9):
        node.tick("frame")
    node.run()  # returns: the node ends at the end of a non-looping file
    assert len(node.published) == 5
    assert [round(p.data.mean() / 40) for p in node.published] == [0, 1, 2, 3, 4]


def test_camera_params_are_validated_at_load():
    with pytest.raises(ParamError, match="source"):
        Node.for_test(camera, params={"source": "webcam"})


def test_imu_calibrates_then_publishes_corrected_samples():
    rate = 100.0
    node = Node.for_test(imu, params={"driver": "sim", "rate_hz": rate, "calibrate_s": 0.5,
                                      "sim_gyro_bias": [0.05, -0.04, 0.03], "sim_noise": 0.001})
    for _ in range(100):
        node.tick("sample")
    node.run()  # calibrates for 0.5 s (50 samples) before its loop, then one sample per tick
    assert len(node.published) == 100
    gyro = np.array([p.data["gyro"] for p in node.published])
    assert np.abs(gyro.mean(axis=0)).max() < 0.001
    assert node.published[0].data["accel"][2] == pytest.approx(9.81, abs=0.05)


def test_odometry_publishes_pose_fields():
    node = Node.for_test(odometry, params={"driver": "sim", "sim_speed": 0.3})
    node.tick("read").tick("read")
    node.run()
    msg = node.published[-1].data
    assert set(msg) == {"x", "y", "theta", "v", "omega", "s"}


def test_pose_fuses_odometry_and_imu_messages():
    node = Node.for_test(pose, params={"gyro_weight": 1.0})
    ms = 1_000_000
    node.feed("imu", {"gyro": [0, 0, 0.5]}, stamp_ns=0)
    node.feed("odom", {"s": 0.0, "theta": 0.0}, stamp_ns=0)
    node.feed("imu", {"gyro": [0, 0, 0.5]}, stamp_ns=100 * ms)
    node.feed("odom", {"s": 0.02, "theta": 0.0}, stamp_ns=100 * ms)  # wheels saw no turn
    node.run()
    last = node.published[-1]
    assert last.output == "pose" and last.data["source"] == "fused"
    assert last.data["theta"] == pytest.approx(0.05)  # the gyro's 0.5 rad/s over 0.1 s
    assert last.envelope.stamp_ns == 100 * ms


def test_detector_then_identity_name_the_owner_and_keep_the_capture_stamp(tmp_path, blazeface_path):
    scene = DoorScene(640, 480)
    owner_t, visitor_t = 2.0, 8.0
    det = Node.for_test(detector, params={"model": str(blazeface_path), "backend": "numpy",
                                          "max_age_ms": 0.0})
    t0 = time.monotonic_ns()
    frames = {t0 + 1: scene.render(owner_t), t0 + 2: scene.render(visitor_t), t0 + 3: scene.render(5.0)}
    for stamp, frame in frames.items():
        det.feed("image", frame, stamp_ns=stamp)
    det.run()
    assert [p.envelope.stamp_ns for p in det.published] == list(frames)
    assert [len(p.data["boxes"]) for p in det.published] == [1, 1, 0]

    # Enroll the owner from the shipped photo, as `iotrt enroll` would.
    from iotrt.nodes.perception.inference import FaceDetector
    from iotrt.nodes.perception.modelcache import load_model
    from iotrt.nodes.sensing.scene import load_face

    model, _ = load_model(str(blazeface_path), tmp_path / "m", "numpy")
    face = load_face("owner")
    kps = np.array(FaceDetector(model)(face)["keypoints"][0])
    gallery = Gallery("lbp")
    gallery.add("owner", lbp_extractor()(face, kps))
    gallery.save(tmp_path / "gallery.npz")

    ident = Node.for_test(identity, params={"gallery": str(tmp_path / "gallery.npz")})
    for stamp, frame in frames.items():
        ident.feed("image", frame, stamp_ns=stamp)
    for p in det.published:
        ident.feed("detections", p.data, stamp_ns=p.envelope.stamp_ns)
    ident.run()
    out = [p.data for p in ident.published]
    assert [o["known"] for o in out] == [["owner"], [], []]
    assert [o["unknown"] for o in out] == [0, 1, 0]
    assert out[0]["faces"][0]["score"] > 0.7 and out[0]["unpaired"] == 0
    assert [p.envelope.stamp_ns for p in ident.published] == list(frames)


def test_identity_without_a_gallery_is_a_clear_error(tmp_path):
    node = Node.for_test(identity, params={"gallery": str(tmp_path / "none.npz")})
    with pytest.raises(Exception, match="enroll someone first"):
        node.run()


def test_identity_reloads_the_gallery_on_reload(tmp_path, photo, litert, monkeypatch):
    from iotrt.nodes.perception.blazeface import BlazeFace

    face = photo("astronaut")
    faces = BlazeFace().detect(face, litert)
    det = {"boxes": faces.boxes.tolist(), "scores": faces.scores.tolist(),
           "keypoints": faces.keypoints.tolist()}
    path = tmp_path / "g.npz"
    empty = Gallery("lbp")
    empty.save(path)
    node = Node.for_test(identity, params={"gallery": str(path)})
    node.feed("image", face, stamp_ns=1).feed("detections", det, stamp_ns=1).run()
    assert node.published[-1].data["known"] == []
    # Enrolled while the node runs, then a reload: the same face is now known.
    g = Gallery("lbp")
    g.add("eileen", lbp_extractor()(face, faces.keypoints[0]))
    g.save(path)
    node.feed_reload().feed("image", face, stamp_ns=2).feed("detections", det, stamp_ns=2).run()
    assert node.published[-1].data["known"] == ["eileen"]
    # A gallery that fails to load on reload keeps the previous one working.
    real_build, calls = identity.build, []

    def build_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise GalleryError("gallery g.npz is not a readable gallery file")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(identity, "build", build_then_fail)
    node.feed_reload().feed("image", face, stamp_ns=3).feed("detections", det, stamp_ns=3).run()
    assert len(calls) == 2 and node.published[-1].data["known"] == ["eileen"]


@pytest.mark.parametrize("module,params,name", [
    (imu, {"rate_hz": 5000.0}, "rate_hz"),
    (odometry, {"rate_hz": 0.0}, "rate_hz"),
    (pose, {"gyro_weight": 1.5}, "gyro_weight"),
    (detector, {"score_threshold": 2.0}, "score_threshold"),
    (identity, {"method": "eigenfaces"}, "method"),
])
def test_out_of_range_params_are_refused_before_start(module, params, name):
    with pytest.raises(ParamError, match=name):
        Node.for_test(module, params=params)


def test_malformed_inputs_are_skipped_and_the_node_keeps_going(tmp_path, blazeface_path, caplog):
    good = DoorScene(640, 480).render(2.0)
    det = Node.for_test(detector, params={"model": str(blazeface_path), "backend": "numpy",
                                          "max_age_ms": 0.0})
    det.feed("image", {"not": "a frame"}).feed("image", np.zeros((4, 4, 5), np.uint8))
    det.feed("image", "text").feed("image", good).run()
    assert len(det.published) == 1 and len(det.published[0].data["boxes"]) == 1
    assert "skipped 1 bad frame" in caplog.text

    node = Node.for_test(pose, params={})
    node.feed("imu", {"gyro": "x"}, stamp_ns=1).feed("odom", {"s": 0.0}, stamp_ns=2)
    node.feed("odom", {"s": 0.0, "theta": 0.0}, stamp_ns=3).run()
    assert len(node.published) == 1

    g = Gallery("lbp")
    g.add("someone", np.ones(7 * 7 * 59))
    g.save(tmp_path / "g.npz")
    ident = Node.for_test(identity, params={"gallery": str(tmp_path / "g.npz")})
    ident.feed("image", good, stamp_ns=5).feed("detections", {"boxes": [[1, 2, 3, 4]], "keypoints": [7]}, stamp_ns=5)
    ident.feed("image", good, stamp_ns=6).feed("detections", det.published[0].data, stamp_ns=6).run()
    assert len(ident.published) == 1 and ident.published[0].data["unknown"] == 1
