"""`iotrt enroll`: a gallery from photos, clear errors, and nothing lost on a bad photo."""

from __future__ import annotations

import cv2
import pytest

from iotrt.cli import main
from iotrt.nodes.perception.gallery import Gallery
from iotrt.nodes.sensing.scene import DATA


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def photos(tmp_path, photo):
    """JPEG files of scikit-image photographs, written the way a camera app would (BGR)."""
    def write(name):
        path = tmp_path / f"{name}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(photo(name), cv2.COLOR_RGB2BGR))
        return str(path)
    return write


def enroll(*args) -> int:
    return main(["enroll", *args, "--backend", "onnxruntime"])


def test_enroll_then_list_remove_and_replace(tmp_path, photos, capsys):
    g = str(tmp_path / "g.npz")
    assert enroll("owner", str(DATA / "owner.jpg"), "--gallery", g) == 0
    assert enroll("visitor", str(DATA / "visitor.jpg"), photos("camera"), "--gallery", g) == 0
    out = capsys.readouterr().out
    assert "face" in out and "score" in out and "enrolled visitor from 2 photo(s)" in out
    gallery = Gallery.load(g)
    assert gallery.names == ["owner", "visitor", "visitor"] and gallery.method == "lbp"

    assert enroll("visitor", photos("camera"), "--gallery", g, "--replace") == 0
    assert Gallery.load(g).names == ["owner", "visitor"]
    assert enroll("visitor", "--gallery", g, "--remove") == 0
    assert Gallery.load(g).names == ["owner"]
    capsys.readouterr()
    assert enroll("--list", "--gallery", g) == 0
    assert "1 people, 1 photos" in capsys.readouterr().out


def test_a_photo_without_a_face_changes_nothing(tmp_path, photos, capsys):
    g = tmp_path / "g.npz"
    assert enroll("owner", str(DATA / "owner.jpg"), "--gallery", str(g)) == 0
    before = g.read_bytes()
    # The first photo is fine, the second has no face: the person is not half-enrolled.
    assert enroll("alice", photos("astronaut"), photos("rocket"), "--gallery", str(g)) == 1
    err = capsys.readouterr().err
    assert "rocket.jpg: no face found" in err
    assert g.read_bytes() == before


def test_missing_and_unreadable_photos_are_named(tmp_path, capsys):
    g = tmp_path / "g.npz"
    assert enroll("alice", str(tmp_path / "nope.jpg"), "--gallery", str(g)) == 1
    assert "nope.jpg: no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\x00" * 100)
    assert enroll("alice", str(junk), "--gallery", str(g)) == 1
    assert "junk.jpg: not an image" in capsys.readouterr().err
    assert not g.exists()


def test_method_mismatch_and_missing_model_are_clear(tmp_path, capsys):
    g = str(tmp_path / "g.npz")
    assert enroll("owner", str(DATA / "owner.jpg"), "--gallery", g) == 0
    assert enroll("bob", str(DATA / "visitor.jpg"), "--gallery", g, "--method", "embedding") == 1
    assert "needs --model" in capsys.readouterr().err
    assert enroll("--gallery", g) == 2
