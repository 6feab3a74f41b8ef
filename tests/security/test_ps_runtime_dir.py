"""Issue 13 item 12: `iotrt ps` with IOTRT_RUNTIME_DIR set looks only under that root; a graph
running under another root (another user's /tmp/iotrt-*, the system service's) is never the
one it reports on."""

from __future__ import annotations

import pytest

from iotrt.control import CONTROL_NAME, ControlError, running_graphs
from iotrt.verbs._graph import control_address


def _fake_graph(root, name):
    d = root / name
    d.mkdir(parents=True)
    (d / CONTROL_NAME).touch()      # what running_graphs looks for: a control socket's path
    return d / CONTROL_NAME


def test_ps_with_a_runtime_dir_never_reports_another_roots_graph(tmp_path):
    mine, other = tmp_path / "mine", tmp_path / "xdg"
    mine.mkdir()
    _fake_graph(other / "iotrt", "door")
    environ = {"IOTRT_RUNTIME_DIR": str(mine), "XDG_RUNTIME_DIR": str(other)}
    assert running_graphs(environ) == {}
    with pytest.raises(ControlError, match="no running graph"):
        control_address(None, environ)
    with pytest.raises(ControlError, match="no running graph named 'door'"):
        control_address("door", environ)


def test_ps_with_a_runtime_dir_finds_its_own_graph(tmp_path):
    mine = tmp_path / "mine"
    ctl = _fake_graph(mine, "door")
    _fake_graph(tmp_path / "xdg" / "iotrt", "door")
    environ = {"IOTRT_RUNTIME_DIR": str(mine), "XDG_RUNTIME_DIR": str(tmp_path / "xdg")}
    assert control_address(None, environ) == f"ipc://{ctl}"
