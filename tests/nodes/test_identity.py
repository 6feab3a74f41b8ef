"""Identity: a person enrolled from one photo is recognised in other views; others are unknown."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from iotrt.nodes.perception import facefeatures as ff
from iotrt.nodes.perception.blazeface import BlazeFace
from iotrt.nodes.perception.gallery import Gallery, GalleryError
from iotrt.nodes.perception.matcher import METHODS, Identifier, Pairer, lbp_extractor
from iotrt.nodes.sensing.scene import DoorScene


def detections(frame, litert) -> dict:
    faces = BlazeFace().detect(frame, litert)
    return {"boxes": faces.boxes.tolist(), "scores": faces.scores.tolist(),
            "keypoints": faces.keypoints.tolist()}


@pytest.fixture(scope="module")
def identifier(photo, litert):
    """A gallery with the astronaut enrolled from her one portrait, as 'owner'."""
    ast = photo("astronaut")
    det = detections(ast, litert)
    gallery = Gallery("lbp")
    gallery.add("owner", lbp_extractor()(ast, np.array(det["keypoints"][0])))
    return Identifier(gallery, lbp_extractor(), METHODS["lbp"][1])


def relit(img, gain, offset=0.0, gamma=1.0):
    x = (img.astype(np.float32) / 255.0) ** gamma * 255.0 * gain + offset
    return np.clip(x, 0, 255).astype(np.uint8)


def views(img):
    h, w = img.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h * 0.4), 12, 1.0)
    big = cv2.resize(img, None, fx=1.5, fy=1.5)
    return {
        "shifted": np.roll(img, (40, -60), axis=(0, 1)),
        "scaled_down": cv2.resize(img, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA),
        "scaled_up": big[100:612, 100:612],
        "rotated": cv2.warpAffine(img, rot, (w, h)),
        "darker": relit(img, 0.5),
        "brighter": relit(img, 1.3, 15),
        "gamma": relit(img, 1.0, gamma=1.8),
        "shift_scale_relit": relit(cv2.resize(np.roll(img, (25, 30), (0, 1)), None, fx=0.75, fy=0.75), 0.7, 10),
    }


@pytest.mark.parametrize("view", list(views(np.zeros((512, 512, 3), np.uint8))))
def test_owner_recognised_in_transformed_views(view, identifier, photo, litert):
    img = views(photo("astronaut"))[view]
    out = identifier.identify(img, detections(img, litert))
    assert [f["name"] for f in out["faces"]] == ["owner"], out
    assert out["known"] == ["owner"] and out["unknown"] == 0


def test_owner_recognised_in_sim_frames_and_visitor_unknown(identifier, litert):
    scene = DoorScene(640, 480)
    seen = {"owner": [], "visitor": []}
    for t in np.arange(0.25, 12.0, 0.5):
        who = scene.appearance(t)
        frame = scene.render(t)
        out = identifier.identify(frame, detections(frame, litert))
        if who is None:
            assert out["faces"] == [], f"t={t}: nobody there, got {out}"
            continue
        seen[who.name] += [(f["name"], f["score"]) for f in out["faces"]]
    assert len(seen["owner"]) >= 7 and len(seen["visitor"]) >= 6, seen
    assert all(name == "owner" for name, _ in seen["owner"]), seen["owner"]
    assert all(name == "unknown" for name, _ in seen["visitor"]), seen["visitor"]
    # The margin the default threshold sits in, so a regression in alignment shows here.
    assert min(s for _, s in seen["owner"]) > METHODS["lbp"][1] + 0.03
    assert max(s for _, s in seen["visitor"]) < METHODS["lbp"][1] - 0.05


def test_a_different_face_is_unknown(identifier, photo, litert):
    img = photo("camera")
    out = identifier.identify(img, detections(img, litert))
    assert [f["name"] for f in out["faces"]] == ["unknown"]
    assert out["known"] == [] and out["unknown"] == 1 and out["faces"][0]["known"] is False


def test_nobody_in_view_is_an_empty_message(identifier):
    out = identifier.identify(np.zeros((480, 640, 3), np.uint8), {"boxes": [], "scores": [], "keypoints": []})
    assert out["faces"] == [] and out["known"] == [] and out["unknown"] == 0


def test_a_face_whose_frame_is_gone_is_unknown_and_counted(identifier, photo, litert):
    det = detections(photo("astronaut"), litert)
    before = identifier.unpaired
    out = identifier.identify(None, det)
    assert out["faces"][0]["name"] == "unknown" and out["faces"][0]["score"] == 0.0
    assert out["unpaired"] == before + 1


def test_a_tiny_face_is_unknown(identifier, photo, litert):
    det = detections(photo("astronaut"), litert)
    tiny = np.array(det["keypoints"][0]) * 0.05
    det["keypoints"][0] = tiny.tolist()
    assert identifier.identify(photo("astronaut"), det)["faces"][0]["name"] == "unknown"


def test_pairer_matches_frames_and_detections_in_either_order():
    p = Pairer(3)
    f = {s: np.full((2, 2), s) for s in range(1, 7)}
    assert [(s, d) for s, d, _ in p.frame(1, f[1])] == []
    (s, d, fr), = p.detections(1, {"n": 1})  # frame first: paired at once
    assert s == 1 and fr[0, 0] == 1
    assert p.detections(3, {"n": 3}) == []  # detections first: they wait ...
    assert p.frame(2, f[2]) == []
    (s, d, fr), = p.frame(3, f[3])  # ... until their frame arrives
    assert s == 3 and d == {"n": 3} and fr[0, 0] == 3


def test_pairer_gives_up_on_frames_that_were_dropped():
    p = Pairer(3)
    p.frame(1, np.zeros(1))
    assert p.detections(2, {"n": 2}) == []
    # Frame 2 never comes; frame 3 does: detections 2 go out without a frame.
    (s, d, fr), = p.frame(3, np.zeros(1))
    assert s == 2 and fr is None
    # Detections for a frame older than the newest and already forgotten: out at once, unpaired.
    for s in range(4, 8):
        p.frame(s, np.zeros(1))
    (s, d, fr), = p.detections(3, {"n": 3})
    assert s == 3 and fr is None
    # Too many waiting (a frame source that stopped): the oldest are released unpaired.
    out = [x for s in range(10, 15) for x in p.detections(s, {"n": s})]
    assert [s for s, _, fr in out if fr is None] == [10, 11]


def test_lbp_codes_ignore_brightness_and_contrast(photo):
    grey = cv2.cvtColor(photo("astronaut"), cv2.COLOR_RGB2GRAY) // 2  # 0..127
    x = np.arange(128)
    # Strictly increasing grey-level maps keep every neighbour comparison, so every code.
    brighter_more_contrast = (2 * x + 1).astype(np.uint8)
    curved = (x + np.round(128 * (x / 127) ** 2)).astype(np.uint8)
    codes = ff.lbp_image(grey)
    assert np.array_equal(codes, ff.lbp_image(brighter_more_contrast[grey]))
    assert np.array_equal(codes, ff.lbp_image(curved[grey]))
    # ... and a map that reverses the order does change them: the test can fail.
    assert not np.array_equal(codes, ff.lbp_image((127 - grey).astype(np.uint8)))


def test_uniform_patterns_are_58_plus_one():
    assert len(set(ff.UNIFORM.tolist())) == 59
    assert ff.UNIFORM[0] != ff.UNIFORM[0b01010101] and ff.UNIFORM[0b01010101] == 58


@pytest.mark.parametrize("angle,scale", [(0, 0.7), (20, 1.0), (-35, 1.3)])
def test_alignment_undoes_rotation_and_scale(angle, scale, photo, litert):
    """Same face moved by a known similarity -> (nearly) the same crop. Keypoints are moved
    exactly, so this checks the alignment itself, not the detector's keypoint noise."""
    img = photo("astronaut")
    kps = np.array(detections(img, litert)["keypoints"][0])
    crop = ff.align(img, kps)
    m = cv2.getRotationMatrix2D((256, 256), angle, scale)
    moved = cv2.warpAffine(img, m, (512, 512), flags=cv2.INTER_CUBIC)
    crop2 = ff.align(moved, kps @ m[:, :2].T + m[:, 2])
    assert crop.shape == crop2.shape == (112, 112, 3)
    diff = np.abs(crop.astype(int) - crop2.astype(int))[8:-8, 8:-8].mean()
    assert diff < 6, f"aligned crops differ by {diff:.1f} grey levels on average"


def test_similarity_transform_is_exact_on_exact_points():
    src = ff.TEMPLATE_112 * 0.5 + [300, 20]
    m = ff.similarity_transform(src, ff.TEMPLATE_112)
    np.testing.assert_allclose(src @ m[:, :2].T + m[:, 2], ff.TEMPLATE_112, atol=1e-4)
    with pytest.raises(ff.FeatureError):
        ff.similarity_transform(np.ones((4, 2)), ff.TEMPLATE_112)


# ---- gallery storage ----------------------------------------------------------------------

def test_gallery_round_trip_is_atomic_and_exact(tmp_path):
    g = Gallery("lbp")
    rng = np.random.default_rng(0)
    a, b = rng.random(8, np.float32), rng.random(8, np.float32)
    g.add("alice", a)
    g.add("bob", b)
    g.add("alice", b)
    path = tmp_path / "g.npz"
    g.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["g.npz"]  # no temporary left behind
    back = Gallery.load(path)
    assert back.names == ["alice", "bob", "alice"] and back.people == ["alice", "bob"]
    np.testing.assert_array_equal(back.features, np.stack([a, b, b]))
    assert back.remove("alice") == 2 and back.names == ["bob"]


def test_gallery_errors_say_what_is_wrong(tmp_path):
    g = Gallery("lbp")
    g.add("alice", np.ones(4))
    with pytest.raises(GalleryError, match="feature size"):
        g.add("bob", np.ones(5))
    with pytest.raises(GalleryError, match="reserved"):
        g.add("unknown", np.ones(4))
    path = tmp_path / "g.npz"
    g.save(path)
    with pytest.raises(GalleryError, match="method 'lbp'"):
        Gallery.open_or_create(path, "embedding", "abc")
    with pytest.raises(GalleryError, match="does not exist"):
        Gallery.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(GalleryError, match="not a readable gallery"):
        Gallery.load(bad)
    e = Gallery("embedding", "sha-one")
    e.add("alice", np.ones(4))
    e.save(tmp_path / "e.npz")
    with pytest.raises(GalleryError, match="another embedding model"):
        Gallery.open_or_create(tmp_path / "e.npz", "embedding", "sha-two")


def _view(known=(), unknown=0):
    faces = [{"name": n, "score": 0.9, "known": True} for n in known]
    faces += [{"name": "unknown", "score": 0.2, "known": False}] * unknown
    return {"faces": faces, "known": sorted(known), "unknown": unknown}


def test_presence_journals_arrivals_and_departures_once_debounced():
    from iotrt.nodes.perception.identity import Presence

    p = Presence(hold=3)
    stream = ([_view()] * 2 + [_view(["owner"])] * 5 + [_view()] + [_view(["owner"])] * 2
              + [_view()] * 3 + [_view(unknown=1)] * 3)
    entries = [(i, e) for i, e in enumerate(p.update(v) for v in stream) if e is not None]
    # owner arrives (held 3), a one-frame miss is ignored, owner leaves, a visitor arrives
    assert [i for i, _ in entries] == [4, 12, 15]
    assert entries[0][1]["known"] == ["owner"] and entries[0][1]["scores"] == {"owner": 0.9}
    assert entries[1][1]["known"] == [] and entries[1][1]["faces"] == 0
    assert entries[2][1]["unknown"] == 1 and entries[2][1]["known"] == []


def test_pairer_lets_go_of_frames_once_their_detections_are_handled():
    """A frame kept here pins a slot of the camera's shared-memory ring: after its detections
    (or a later frame's) are handled, it and every older frame must be released."""
    p = Pairer(8)
    for s in range(1, 5):
        p.frame(s, np.zeros(1))
    p.detections(2, {"n": 2})
    assert list(p.frames) == [3, 4]
    p.detections(5, {"n": 5})              # waits for its frame
    p.frame(5, np.zeros(1))
    assert list(p.frames) == []
