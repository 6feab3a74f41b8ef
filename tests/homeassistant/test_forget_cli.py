"""`iotrt mqtt forget`: what it says when there is nothing it can do (the real clearing runs
against mosquitto in test_bridge.py)."""

from __future__ import annotations

from pathlib import Path

from hassim import free_port

from iotrt.cli import main

ROOT = Path(__file__).resolve().parents[2]


def graph(tmp_path: Path, bridge_params: str) -> str:
    path = tmp_path / "g.yaml"
    path.write_text(f"""
name: fg
nodes:
  - id: lock
    kind: lock
{bridge_params}
""")
    return str(path)


def test_a_graph_without_a_bridge(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IOTRT_RUNTIME_DIR", str(tmp_path / "run"))
    assert main(["mqtt", "forget", graph(tmp_path, "")]) == 1
    assert "nothing to forget: no node of this graph leaves retained topics" in \
        capsys.readouterr().err


def test_a_bridge_that_is_off_or_cannot_reach_its_broker(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IOTRT_RUNTIME_DIR", str(tmp_path / "run"))
    off = "  - id: ha\n    kind: homeassistant\n    inputs: {lock: lock/state}\n"
    assert main(["mqtt", "forget", graph(tmp_path, off)]) == 1
    assert "host is empty" in capsys.readouterr().err
    nobody = off + f"    params: {{host: 127.0.0.1, port: {free_port()}}}\n"
    assert main(["mqtt", "forget", graph(tmp_path, nobody), "--timeout", "2"]) == 1
    assert "cannot reach the broker" in capsys.readouterr().err
    missing = off + "    params: {host: 127.0.0.1, password_env: NOT_SET_FOR_FORGET}\n"
    assert main(["mqtt", "forget", graph(tmp_path, missing)]) == 1
    assert "$NOT_SET_FOR_FORGET" in capsys.readouterr().err
