"""The shipped graphs, their rules and the sample gallery: valid, up to date, and doing what
their comments say (checked offline with `iotrt rules test`, as a user would)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from iotrt.nodes.perception.gallery import Gallery

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def iotrt(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iotrt", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("name", ["door.yaml", "robot.yaml"])
def test_shipped_graphs_validate(name):
    done = iotrt("validate", str(CONFIGS / name))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


def test_sample_gallery_is_what_enroll_makes_today(tmp_path):
    """configs/door.gallery.npz is `iotrt enroll owner <shipped owner photo>`; a change to the
    features or the detector must come with a re-enrolled gallery."""
    fresh = tmp_path / "g.npz"
    done = iotrt("enroll", "owner", str(ROOT / "nodes/sensing/data/owner.jpg"), "--gallery", str(fresh))
    assert done.returncode == 0, done.stderr
    shipped, made = Gallery.load(CONFIGS / "door.gallery.npz"), Gallery.load(fresh)
    assert shipped.names == made.names == ["owner"]
    assert shipped.method == made.method
    np.testing.assert_allclose(shipped.features, made.features, atol=1e-4)


def _rules_test(rules: Path, messages: list, tmp_path: Path) -> str:
    inp = tmp_path / "messages.yaml"
    inp.write_text(yaml.safe_dump(messages))
    done = iotrt("rules", "test", str(rules), "--input", str(inp))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _faces(t, *faces):
    return {"t": t, "topic": "faces",
            "data": {"faces": [{"name": n, "score": s, "known": n != "unknown", "box": [0, 0, 10, 10]}
                               for n, s in faces]}}


def test_door_rules_unlock_only_for_enrolled(tmp_path):
    out = _rules_test(CONFIGS / "door.rules.yaml", [
        _faces(0.0, ("unknown", 0.0)), _faces(0.1, ("unknown", 0.0)), _faces(0.2, ("unknown", 0.0)),
        _faces(0.3, ("unknown", 0.0)), _faces(5.0), _faces(6.0, ("owner", 0.95)),
        _faces(6.1, ("owner", 0.95)), {"t": 8.0},
    ], tmp_path)
    lines = out.splitlines()
    unlock = [ln for ln in lines if "command lock" in ln]
    assert len(unlock) == 1 and '"unlock"' in unlock[0] and '"who": "owner"' in unlock[0]
    assert float(unlock[0].split("s")[0]) >= 6.0          # never for the visitor before
    assert any("visitor" in ln and "fired" in ln for ln in lines)
    assert any("command snapshot" in ln for ln in lines)


def _det(t, *boxes):
    return {"t": t, "topic": "detections",
            "data": {"boxes": [list(b) for b in boxes], "scores": [0.9] * len(boxes), "size": [640, 480]}}


def test_robot_rules_stop_steer_and_stop_when_blind(tmp_path):
    out = _rules_test(CONFIGS / "robot.rules.yaml", [
        _det(0.0), _det(0.5, (400, 100, 460, 160)),           # far face: keep driving
        _det(1.0, (200, 100, 440, 340)),                      # close, ahead: stop
        _det(1.5, (0, 100, 240, 340)),                        # close, on the left: steer right
        _det(2.0), {"t": 4.0},                                # clear, then the camera goes silent
    ], tmp_path)
    motors = [(float(ln.split("s")[0]), ln.split("command motors ")[1])
              for ln in out.splitlines() if "command motors" in ln]
    assert any(t < 1.0 and '"left": 0.3, "right": 0.3' in m for t, m in motors)
    assert any(t == 1.0 and '"left": 0, "right": 0' in m for t, m in motors)
    assert not any(1.0 < t < 1.5 and m != '{"left": 0, "right": 0}' for t, m in motors)
    steer = [m for t, m in motors if 1.5 < t < 2.0]
    assert steer and all('"left": 0.45, "right": 0.15' in m for m in steer)
    assert motors[-1][1] == '{"left": 0, "right": 0}'            # blind: stopped, and stays so
    assert motors[-1][0] == pytest.approx(3.0, abs=0.06)
