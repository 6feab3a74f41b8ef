"""Attack 8: NaN and infinity passed float parameters. `max_unlock_s: .nan` removed the unlock
cap (NaN compares false with every bound); `CAMERA_FPS=.nan` passed validation and crashed the
camera. Non-finite values are refused at validation, at their file:line, unless a parameter
explicitly allows them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from iotrt.graph import GraphError, load_graph
from iotrt.nodes.action.lock import Lock
from iotrt.spec import NodeSpec, Param

CONFIGS = Path(__file__).parents[2] / "configs"


def graph(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "g.yaml"
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
def test_lock_cap_cannot_be_nan_or_infinite(tmp_path, value):
    g = graph(tmp_path, f"""\
        name: door
        nodes:
          - id: lock
            kind: lock
            params:
              max_unlock_s: {value}
        """)
    with pytest.raises(GraphError) as err:
        load_graph(g)
    assert f"{g}:6:" in str(err.value) and "finite" in str(err.value)


def test_env_substituted_nan_is_refused_where_it_is_used(tmp_path):
    with pytest.raises(GraphError) as err:
        load_graph(CONFIGS / "door.yaml", environ={"CAMERA_FPS": ".nan", "HOME": str(tmp_path),
                                                  "IOTRT_RUNTIME_DIR": str(tmp_path)})
    line = next(i for i, text in enumerate((CONFIGS / "door.yaml").read_text().splitlines(), 1)
                if "CAMERA_FPS" in text)
    assert f"door.yaml:{line}:" in str(err.value) and "params.fps" in str(err.value)


def test_supervisor_settings_cannot_be_nan(tmp_path):
    g = graph(tmp_path, """\
        name: door
        supervisor: {heartbeat_s: .nan, backoff: {max_s: .inf}}
        nodes:
          - id: lock
            kind: lock
        """)
    with pytest.raises(GraphError) as err:
        load_graph(g)
    assert str(err.value).count(f"{g}:2:") == 2


def test_nan_inside_a_list_param_and_the_explicit_opt_in():
    strict = Param("gains", list, [1.0])
    assert "finite" in strict.problem([1.0, float("nan")])
    assert Param("threshold", float, 0.5).problem(float("inf"))
    assert Param("threshold", float, 0.5, nonfinite=True).problem(float("inf")) is None
    spec = NodeSpec(params=[Param("limit", float, float("inf"), nonfinite=True)])
    assert spec.validate_params({}) == {"limit": float("inf")}


def test_the_lock_itself_refuses_a_nan_cap():
    with pytest.raises(ValueError, match="finite"):
        Lock(driver=None, max_unlock_s=float("nan"))
