"""deploy/install.sh end to end in a throwaway prefix: install from this checkout into a fresh
venv, copy only the graph's own files, write the unit, then upgrade (only installed graphs) and
uninstall. Runs as the current user (IOTRT_USER) with systemd skipped (IOTRT_SYSTEMD=0), so it
creates no system user and touches no service of this machine."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "install.sh"


@pytest.mark.timeout(900)     # pip installs the core dependencies into a fresh venv
def test_install_upgrade_uninstall_in_a_throwaway_prefix(tmp_path):
    src = tmp_path / "mygraphs"
    src.mkdir()
    for name in ("door.yaml", "door.rules.yaml", "door.gallery.npz", "robot.yaml", "robot.rules.yaml"):
        shutil.copy(ROOT / "configs" / name, src / name)
    (src / "private-notes.txt").write_text("not part of the graph\n")
    prefix, etc, units = tmp_path / "opt", tmp_path / "etc", tmp_path / "units"
    home = tmp_path / "home"      # the service user's home is made by systemd, not install.sh
    home.mkdir()
    env = {**os.environ, "IOTRT_PREFIX": str(prefix), "IOTRT_ETC": str(etc),
           "IOTRT_UNIT_DIR": str(units), "IOTRT_USER": getpass.getuser(), "IOTRT_SYSTEMD": "0",
           "HOME": str(home), "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR")
           or str(Path.home() / ".cache" / "pip")}
    for key in ("IOTRT_RUNTIME_DIR", "IOTRT_STATE_DIR", "XDG_STATE_HOME", "XDG_RUNTIME_DIR",
                "STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
        env.pop(key, None)

    def sh(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run(["sh", str(SCRIPT), *args], env=env, capture_output=True,
                             text=True, timeout=900)
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    # a bare name is refused: the script never asks the package index for "iotrt"
    refused = subprocess.run(["sh", str(SCRIPT), "install", str(src / "door.yaml"), "iotrt"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "neither an iotrt checkout" in refused.stderr
    assert not (prefix / "venv").exists()

    out = sh("install", str(src / "door.yaml"))           # SOURCE: this checkout
    assert f"installing {ROOT} into {prefix}/venv" in out.stdout
    python = prefix / "venv" / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import iotrt, iotrt.nodes; print(iotrt.__file__)"],
                           capture_output=True, text=True, check=True).stdout
    assert str(prefix / "venv") in where                 # a real install, not this checkout
    # the -OO bytecode the shipped graphs' nodes run (`optimize: 2`), which the service user
    # could not write later
    package = Path(where.strip()).parent
    assert list((package / "__pycache__").glob("node.*.opt-2.pyc"))
    assert list((package / "nodes" / "action" / "__pycache__").glob("lock.*.opt-2.pyc"))
    # only the graph and the files it names
    installed = sorted(p.name for p in (etc / "door").iterdir())
    assert installed == ["door.gallery.npz", "door.rules.yaml", "door.yaml"]
    unit = (units / "iotrt-door.service").read_text()
    assert f"ExecStart={python} -m iotrt up {etc / 'door' / 'door.yaml'}" in unit
    assert "skipped systemctl enable --now iotrt-door.service" in out.stdout
    # validated in the folders the unit gives the service, creating none under the user's home
    # (as the service user, whose home /var/lib/iotrt does not exist yet, that failed)
    assert out.stdout.count("sockets in /run/iotrt/door, state in /var/lib/iotrt/door") == 2
    assert not (home / ".local").exists()
    subprocess.run([str(prefix / "venv" / "bin" / "iotrt"), "validate", str(etc / "door" / "door.yaml")],
                   check=True, capture_output=True)

    # a graph that was copied under /etc/iotrt by hand but never installed is left alone
    (etc / "robot").mkdir()
    shutil.copy(src / "robot.yaml", etc / "robot" / "robot.yaml")
    shutil.copy(src / "robot.rules.yaml", etc / "robot" / "robot.rules.yaml")
    (units / "iotrt-door.service").unlink()
    out = sh("upgrade")
    assert "rewrote iotrt-door.service" in out.stdout and "robot" not in out.stdout
    assert sorted(p.name for p in units.iterdir()) == ["iotrt-door.service"]

    out = sh("uninstall")
    assert not prefix.exists() and not list(units.iterdir())
    assert (etc / "door" / "door.yaml").exists()          # kept without --purge


def test_graph_files_are_the_graph_its_node_files_and_the_files_its_params_name(tmp_path):
    from iotrt.deploy.graphfiles import graph_files
    from iotrt.graph import load_graph

    (tmp_path / "my_nodes").mkdir()
    shutil.copy(ROOT / "tests" / "supervisor" / "graphs" / "nodes" / "testnode.py",
                tmp_path / "my_nodes" / "counter.py")
    shutil.copy(ROOT / "configs" / "door.rules.yaml", tmp_path / "door.rules.yaml")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-gallery.npz"
    shutil.copy(ROOT / "configs" / "door.gallery.npz", elsewhere)
    (tmp_path / "unrelated.yaml").write_text("name: other\nnodes: []\n")
    (tmp_path / "g.yaml").write_text(f"""\
name: files
nodes:
  - id: count
    run: my_nodes/counter.py
  - id: who
    kind: identity
    params: {{gallery: {elsewhere}}}
    inputs: {{image: count/out, detections: count/out}}
  - id: rules
    kind: rules
    params: {{rules: door.rules.yaml}}
    inputs: {{faces: who/faces}}
""")
    try:
        inside, outside = graph_files(load_graph(tmp_path / "g.yaml"))
    finally:
        elsewhere.unlink()
    assert [str(p) for p in inside] == ["g.yaml", "my_nodes/counter.py", "door.rules.yaml"]
    assert outside == [elsewhere.resolve()]
