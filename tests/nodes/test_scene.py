"""The sim camera's doorstep scene: who is in view when, and that frames are sane."""

from __future__ import annotations

import numpy as np
import pytest

from iotrt.nodes.sensing.scene import FACES, DoorScene, load_face


def test_timeline_owner_then_nobody_then_visitor_then_nobody():
    scene = DoorScene(640, 480, period_s=12.0)
    names = [(scene.appearance(t).name if scene.appearance(t) else None) for t in np.arange(0, 24, 0.5)]
    one_period = names[:24]
    assert one_period[:8] == ["owner"] * 8  # 0-4 s
    assert one_period[8:12] == [None] * 4  # 4-6 s
    assert one_period[12:20] == ["visitor"] * 8  # 6-10 s
    assert one_period[20:] == [None] * 4  # 10-12 s
    assert names[24:] == one_period  # it repeats


def test_frames_are_rgb_uint8_of_the_requested_size_and_show_the_person():
    scene = DoorScene(320, 240, period_s=6.0)
    empty = scene.render(2.5)  # nobody
    owner = scene.render(1.0)
    assert owner.shape == (240, 320, 3) and owner.dtype == np.uint8
    who = scene.appearance(1.0)
    cx, cy = int(who.centre[0]), int(who.centre[1])
    # The pasted photo changes the frame around the person's centre, not elsewhere.
    patch = np.s_[cy - 10 : cy + 10, cx - 10 : cx + 10]
    assert np.abs(owner[patch].astype(int) - empty[patch].astype(int)).mean() > 20
    assert np.abs(owner[:10, :10].astype(int) - empty[:10, :10].astype(int)).mean() < 8


def test_people_walk_in_from_outside_the_frame_without_errors():
    scene = DoorScene(640, 480)
    for t in np.linspace(0, 0.8, 9):  # the walk-in: the photo is partly outside the frame
        assert scene.render(t).shape == (480, 640, 3)


def test_shipped_faces_load_and_are_small():
    for name in FACES:
        face = load_face(name)
        assert face.ndim == 3 and min(face.shape[:2]) >= 150


def test_too_small_a_frame_is_refused():
    with pytest.raises(ValueError, match="too small"):
        DoorScene(100, 80)
