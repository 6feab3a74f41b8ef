"""The environment variables iotrt reads, and their defaults, come from one module (issue 18,
item 6): the graph, the CLI's search for running graphs and rundir agree on them."""

from __future__ import annotations

from pathlib import Path

from iotrt import config
from iotrt.control import runtime_roots
from iotrt.rundir import default_runtime_root


def test_runtime_dir_set_by_the_user_is_the_only_root(tmp_path):
    env = {"IOTRT_RUNTIME_DIR": str(tmp_path / "mine"), "XDG_RUNTIME_DIR": str(tmp_path / "xdg"),
           "RUNTIME_DIRECTORY": "/run/iotrt"}
    assert config.named_runtime_roots(env) == [tmp_path / "mine"]
    assert default_runtime_root(env) == tmp_path / "mine"
    assert runtime_roots(env) == [tmp_path / "mine"]


def test_systemd_then_xdg_and_the_cli_also_looks_at_the_system_service(tmp_path):
    env = {"RUNTIME_DIRECTORY": f"{tmp_path}/svc:{tmp_path}/other", "XDG_RUNTIME_DIR": str(tmp_path)}
    assert config.named_runtime_roots(env) == [tmp_path / "svc", tmp_path / "iotrt"]
    assert default_runtime_root(env) == tmp_path / "svc"
    assert runtime_roots(env) == [tmp_path / "svc", config.SYSTEM_RUNTIME_ROOT, tmp_path / "iotrt"]


def test_no_root_in_the_environment_is_a_private_one_never_a_guessable_tmp_path(tmp_path):
    env = {"HOME": str(tmp_path)}
    assert config.named_runtime_roots(env) == []
    root = default_runtime_root(env)     # made and recorded under the state root
    try:
        assert root.is_dir() and root.stat().st_mode & 0o077 == 0
        assert (config.state_root(env) / "runtime-dir").read_text().strip() == str(root)
        # another user could make /tmp/iotrt-<uid> and listen there: it is not searched
        assert runtime_roots(env) == [root, config.SYSTEM_RUNTIME_ROOT]
    finally:
        root.rmdir()


def test_state_root_precedence(tmp_path):
    assert config.state_root({"IOTRT_STATE_DIR": "/a", "STATE_DIRECTORY": "/b"}) == Path("/a")
    assert config.state_root({"STATE_DIRECTORY": "/b:/c", "XDG_STATE_HOME": "/x"}) == Path("/b")
    assert config.state_root({"XDG_STATE_HOME": "/x"}) == Path("/x/iotrt")
    assert config.state_root({"HOME": "/h"}) == Path("/h/.local/state/iotrt")


def test_a_graph_shares_the_cores_among_its_processes():
    assert config.shared_threads(1) >= 1 and config.shared_threads(10_000) == 1
    assert config.shared_threads(0) == config.shared_threads(1)
