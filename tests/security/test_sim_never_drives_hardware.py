"""Attack 11: with `source: auto` and no camera, the door fell back to the simulated doorstep,
whose shipped owner photo unlocks every 12 s - with LOCK_DRIVER=gpio that opens a real door.
A graph where a sensor may run on a simulated source while an actuator drives real hardware
is refused at validation (file:line) unless a loudly named override is set."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from iotrt.graph import GraphError, load_graph
from iotrt.graphschema import SIM_OVERRIDE

CONFIGS = Path(__file__).parents[2] / "configs"


def env(tmp_path: Path, **extra: str) -> dict:
    return {"IOTRT_RUNTIME_DIR": str(tmp_path / "rt"), "HOME": str(tmp_path), **extra}


def cam_line(path: Path) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "id: cam" in t)


@pytest.mark.parametrize("source", ["auto", "sim"])
def test_the_door_with_a_gpio_lock_and_a_simulated_camera_is_refused(tmp_path, source):
    door = CONFIGS / "door.yaml"
    with pytest.raises(GraphError) as err:
        load_graph(door, environ=env(tmp_path, LOCK_DRIVER="gpio", CAMERA_SOURCE=source))
    text = str(err.value)
    assert f"door.yaml:{cam_line(door)}: node 'cam' may publish SIMULATED data" in text
    assert "'lock' drives REAL hardware" in text and SIM_OVERRIDE in text


def test_a_real_camera_with_the_gpio_lock_and_the_sim_door_are_fine(tmp_path):
    load_graph(CONFIGS / "door.yaml", environ=env(tmp_path, LOCK_DRIVER="gpio",
                                                  CAMERA_SOURCE="device"))
    load_graph(CONFIGS / "door.yaml", environ=env(tmp_path))     # all simulated: the demo


def test_the_robot_on_simulated_sensors_cannot_drive_real_motors(tmp_path):
    with pytest.raises(GraphError) as err:
        load_graph(CONFIGS / "robot.yaml", environ=env(tmp_path, MOTOR_DRIVER="serial"))
    assert str(err.value).count("may publish SIMULATED data") >= 2   # camera, imu, odometry


def test_the_override_is_explicit_and_loud(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text(textwrap.dedent(f"""\
        name: bench
        {SIM_OVERRIDE}: true
        nodes:
          - id: cam
            kind: camera
            params: {{source: sim}}
          - id: lock
            kind: lock
            params: {{driver: gpio, line: "17"}}
        """))
    assert load_graph(g, environ=env(tmp_path)).nodes["lock"].params["driver"] == "gpio"
