"""Attack 5: a command that cannot be journaled (a bytes map key, 1,000-deep nesting) was
applied - the door opened for milliseconds with no journal record - and then the lock died;
900 KB command ids bloated the id store. Order must be journal -> apply -> ack: such a command
is refused with the reason and never applied, the lock keeps running, long ids are refused."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from helpers import wait_for

from iotrt.journal import JournalReader

HERE = Path(__file__).parent


def test_hostile_commands_are_refused_never_applied_and_the_lock_survives(tmp_path, up, shared_tmp):
    acks, sim = tmp_path / "acks.jsonl", tmp_path / "door.jsonl"
    g = tmp_path / "g.yaml"
    g.write_text(textwrap.dedent(f"""\
        name: door
        nodes:
          - id: cmd
            run: {HERE / "nodes" / "hostile_commander.py"}
            params: {{out: {acks}}}
            restart: never
          - id: lock
            kind: lock
            params: {{sim_file: {sim}, max_unlock_s: 10}}
            commands: {{commands: cmd/lock}}
        """))
    sup = up(g, shared_tmp / "rt")
    lines = wait_for(lambda: (acks.exists() and len(acks.read_text().splitlines()) == 4
                              and acks.read_text().splitlines()), 30, f"4 acks:\n{sup.text}")
    got = {c["case"]: c["ack"] for c in map(json.loads, lines)}
    for case in ("bytes_key", "deep"):
        assert got[case]["ok"] is False and "journal" in got[case]["error"], got[case]
    assert got["long_id"]["ok"] is False and "id" in got["long_id"]["error"]
    assert got["good"]["ok"] is True        # the same lock process still serves commands
    # the door opened once: for the good command, never for a hostile one
    opened = [s for s in map(json.loads, sim.read_text().splitlines()) if s["locked"] is False]
    assert len(opened) == 1
    assert "lock: running -> " not in sup.text and "lock | Traceback" not in sup.text
    journal = JournalReader(tmp_path / "state" / "door" / "journal.db")
    applied = [e.fields["id"] for e in journal.query(kind="command_applied")]
    assert applied == ["c-good"]
    # every ack the sender saw is in the journal; the unjournalable ones as a refusal
    refused = {e.fields["id"] for e in journal.query(kind="command_unjournalable")}
    assert refused == {"c-bytes", "c-deep"}
    id_store = tmp_path / "state" / "door" / "commands"
    assert sum(f.stat().st_size for f in id_store.rglob("*") if f.is_file()) < 64 * 1024


def test_a_full_disk_refuses_the_unlock_instead_of_applying_it(tmp_path):
    """The supervisor answers a record it cannot write (SQLite: "database or disk is full")
    with an error; the lock must then refuse, not open the door unrecorded."""
    from iotrt.command import CommandError
    from iotrt.node import Node
    from iotrt.nodes.action import lock

    node = Node.for_test(lock, params={"sim_file": str(tmp_path / "door.jsonl")}, id="lock")

    def full_disk(body, sync):
        raise CommandError(f"journal refused record {body['kind']!r}: database or disk is full")
    node.fake.record = full_disk
    for i in range(3):     # every owner visit
        node.feed_command("commands", {"action": "unlock", "duration_s": 5}, id=f"c{i}")
    node.run()
    assert [a["ok"] for a in node.acks] == [False] * 3
    assert all("disk is full" in a["error"] for a in node.acks)
    states = [json.loads(line)["locked"] for line in (tmp_path / "door.jsonl").read_text().splitlines()]
    assert False not in states
