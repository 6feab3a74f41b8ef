"""Every verb that talks to a running graph takes it the same way: `-g/--graph GRAPH` (a file or
a name), the old positional GRAPH where a verb had one, or nothing with one running graph; and
`iotrt topics` shows a header, rates and the command wires. Against a real `iotrt up`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from iotrt.cli import main as cli
from iotrt.journal import JOURNAL_FILE, Journal

DOOR = Path(__file__).resolve().parents[1] / "supervisor" / "graphs" / "door.yaml"


@pytest.fixture
def iotrt(env, monkeypatch, capsys):
    for key in ("IOTRT_RUNTIME_DIR", "IOTRT_STATE_DIR"):
        monkeypatch.setenv(key, env[key])

    def run(*args: str) -> SimpleNamespace:
        capsys.readouterr()
        code = cli(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


def test_every_verb_takes_the_graph_the_same_way(up, env, iotrt, h):
    u = up(DOOR)
    u.wait_log("all 4 nodes up")
    for graph in ([], ["-g", "testdoor"], ["--graph", str(DOOR)]):
        for verb in (["ps"], ["topics"], ["echo", "cam/out", "-n", "1", "--timeout", "5"],
                     ["hz", "cam/out", "--duration", "1.2"], ["reload", "faces"]):
            r = iotrt(*verb, *graph)
            assert r.returncode == 0, (verb, graph, r.stderr)
    for verb in ("ps", "topics"):                    # the positional form still works
        assert iotrt(verb, "testdoor").returncode == 0
    both = iotrt("ps", "testdoor", "-g", "other")
    assert both.returncode == 1 and "two graphs given" in both.stderr
    assert iotrt("ps", "testdoor", "-g", "testdoor").returncode == 0
    missing = iotrt("echo", "cam/out", "-g", "nosuch", "-n", "1")
    assert missing.returncode == 1 and "no running graph named 'nosuch'" in missing.stderr

    # events: another graph's journal under the same state root; the running one is chosen
    state = Path(env["IOTRT_STATE_DIR"])
    h.wait_for(lambda: (state / "testdoor" / JOURNAL_FILE).exists(), 10, "the journal")
    (state / "stopped").mkdir()
    with Journal(state / "stopped" / JOURNAL_FILE) as other:
        other.write("only_in_the_other", "x")
    events = iotrt("events")
    assert events.returncode == 0, events.stderr
    assert "only_in_the_other" not in events.stdout and "_sup" in events.stdout
    assert "only_in_the_other" in iotrt("events", "-g", "stopped").stdout
    assert "only_in_the_other" in iotrt("events", "stopped").stdout

    # topics: header, a rate for a single-output node, the command wires from the graph
    def topics_table():
        r = iotrt("topics")
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = topics_table()
    assert out.splitlines()[0].split() == ["TOPIC", "RATE/s", "SUBSCRIBERS"]
    assert "rules/lock" in out and "-> door.commands" in out     # rules -> lock
    h.wait_for(lambda: float(next(line.split()[1] for line in topics_table().splitlines()
                                  if line.startswith("cam/out"))) > 5,
               10, "cam/out's rate (10 Hz) in iotrt topics")
    assert json.loads(iotrt("ps", "-g", "testdoor", "--json").stdout)["graph"] == "testdoor"

    down = iotrt("down", "-g", "testdoor")
    assert down.returncode == 0, down.stderr
    assert u.wait_exit(10) == 0
    # nothing runs now: events no longer knows which of the two journals is meant
    unclear = iotrt("events")
    assert unclear.returncode == 1 and "name one" in unclear.stderr
