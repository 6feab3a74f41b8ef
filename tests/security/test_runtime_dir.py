"""Attack 1: another local user pre-creates the runtime root (or a folder above it), swaps the
graph's folder and listens on its addresses. Every folder on the path to a socket must be ours
or root's and closed to others; otherwise the graph refuses to start."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from iotrt.rundir import RUNTIME_POINTER, RuntimeDirError, default_runtime_root, ensure_runtime_dir

TEST_NODE = Path(__file__).parents[1] / "supervisor" / "graphs" / "nodes" / "testnode.py"


def one_node_graph(tmp_path: Path) -> Path:
    g = tmp_path / "g.yaml"
    g.write_text(textwrap.dedent(f"""\
        name: door
        nodes:
          - id: cam
            run: {TEST_NODE}
        """))
    return g


def test_up_refuses_a_runtime_root_another_user_precreated(tmp_path, shared_tmp, as_other, up):
    # the attack: the second user creates the predictable root, open to everyone, in /tmp
    squatted = shared_tmp / f"iotrt-{os.getuid()}"
    made = as_other([sys.executable, "-c", f"import os; os.mkdir({str(squatted)!r}, 0o777); "
                                           f"os.chmod({str(squatted)!r}, 0o777)"])
    assert made.returncode == 0, made.stderr
    sup = up(one_node_graph(tmp_path), squatted)
    assert sup.wait_exit(20) != 0
    assert "belongs to uid 65534" in sup.text and str(squatted) in sup.text
    assert not (squatted / "door").exists()   # nothing of ours went into the foreign folder


def test_a_folder_others_can_write_is_refused_anywhere_on_the_path(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)   # root-owned but not sticky: anyone can rename our folder
    with pytest.raises(RuntimeDirError, match="writable by other users"):
        ensure_runtime_dir(open_dir / "iotrt" / "door")
    os.chmod(open_dir, 0o1777)  # sticky, like /tmp: others can add entries, not move ours
    d = ensure_runtime_dir(open_dir / "iotrt" / "door")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(d.parent.stat().st_mode) == 0o700


def test_a_link_made_by_another_user_is_refused(tmp_path, shared_tmp, other_user):
    target = tmp_path / "mine"
    target.mkdir(mode=0o700)
    link = shared_tmp / "iotrt-link"
    link.symlink_to(target)
    os.lchown(link, *other_user)
    with pytest.raises(RuntimeDirError, match="symbolic link made by uid 65534"):
        ensure_runtime_dir(link / "door")


def test_a_folder_of_another_user_is_refused(tmp_path, other_user):
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o755)
    os.chown(foreign, *other_user)
    with pytest.raises(RuntimeDirError, match="belongs to uid 65534"):
        ensure_runtime_dir(foreign / "door")


def no_runtime_env(tmp_path: Path) -> dict:
    return {"HOME": str(tmp_path / "home"), "PATH": os.environ.get("PATH", "")}


def test_default_root_is_fresh_private_and_found_again(tmp_path):
    env = no_runtime_env(tmp_path)
    root = default_runtime_root(env)
    try:
        assert root != Path(f"/tmp/iotrt-{os.getuid()}")    # not predictable
        st = root.stat()
        assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
        assert default_runtime_root(env) == root               # the CLI finds the same one
        pointer = tmp_path / "home" / ".local" / "state" / "iotrt" / RUNTIME_POINTER
        assert pointer.read_text().strip() == str(root)
    finally:
        os.rmdir(root)


def test_default_root_taken_over_is_replaced(tmp_path, other_user):
    env = no_runtime_env(tmp_path)
    root = default_runtime_root(env)
    os.chown(root, *other_user)              # no longer ours: never used again
    fresh = default_runtime_root(env)
    try:
        assert fresh != root and fresh.stat().st_uid == os.getuid()
        os.rmdir(fresh)                      # /tmp cleaned at boot: a new one is made
        again = default_runtime_root(env)
        assert again != fresh and again.is_dir()
        os.rmdir(again)
    finally:
        os.rmdir(root)


def test_a_state_root_of_another_user_is_an_error_at_validation_not_a_traceback(tmp_path,
                                                                                 other_user):
    from iotrt.graph import GraphError, load_graph

    home = tmp_path / "home"
    (home / ".local" / "state").mkdir(parents=True)
    os.chown(home / ".local" / "state", *other_user)   # where the pointer would be kept
    with pytest.raises(GraphError, match="cannot set up the default runtime folder"):
        load_graph(one_node_graph(tmp_path), environ={"HOME": str(home)})
