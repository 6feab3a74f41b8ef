"""Fail-safe behaviour with real processes: nodes launched as the supervisor launches them,
commands over the real acknowledged channel, SIGKILLs, and the journal on disk afterwards."""

from __future__ import annotations

import json

LOCK = "iotrt.nodes.action.lock"
MOTOR = "iotrt.nodes.action.motor"
LOG = "iotrt.nodes.action.log"

# Generous upper bounds: this machine is shared; what must never happen is *early* or *never*.
LATE_S = 1.0


def _unlock_acked(commander) -> dict:
    row = json.loads(commander.next_line())
    assert row["ack"]["ok"] is True and row["ack"]["state"] == "unlocked", row
    return row


def test_rule_killed_during_an_unlock_the_lock_relocks_on_time(graph):
    sim = graph.state / "door.lock.jsonl"
    graph.start_node("door", LOCK, {"max_unlock_s": 10.0})
    rule = graph.commander("door", {"action": "unlock", "duration_s": 1.5})
    acked = _unlock_acked(rule)
    rule.kill()  # the commanding process is gone; nobody will ever send "lock"
    unlocked = next(r for r in graph.read_jsonl(sim) if r["locked"] is False)
    relock = graph.wait_for(
        lambda: next((r for r in graph.read_jsonl(sim)
                      if r["locked"] and r["mono_ns"] > unlocked["mono_ns"]), None),
        timeout=10, what="the lock to re-lock")
    held = (relock["mono_ns"] - unlocked["mono_ns"]) / 1e9
    assert 1.5 <= held < 1.5 + LATE_S, held
    assert unlocked["mono_ns"] <= acked["t_ns"]  # unlocked before the ack, as journaled
    # The command (before its ack) and the self-made re-lock are both in the journal.
    (applied,) = graph.journal(kind="command_applied")
    assert applied.node == "door" and applied.fields["id"] == acked["id"]
    assert applied.fields["src"] == "rule"  # who sent it
    (state,) = graph.wait_journal(kind="actuator_state")
    assert state.fields["cause"] == "timeout" and state.fields["locked"] is True


def test_lock_killed_during_an_unlock_comes_back_locked(graph):
    sim = graph.state / "door.lock.jsonl"
    first = graph.start_node("door", LOCK, {"max_unlock_s": 30.0})
    rule = graph.commander("door", {"action": "unlock", "duration_s": 30})
    acked = _unlock_acked(rule)
    assert graph.read_jsonl(sim)[-1]["locked"] is False
    first.kill()
    # Restarted as the supervisor restarts it: same config, new process.
    second = graph.start_node("door", LOCK, {"max_unlock_s": 30.0})
    rows = [r for r in graph.read_jsonl(sim) if r["pid"] == second.pid]
    assert rows and rows[0]["locked"] is True  # locked from its first instant
    assert all(r["locked"] for r in rows)
    # A retry of the unlock the dead process acknowledged is answered from the persisted id
    # store with the same ack, and does not open the door again.
    from iotrt.command import CommandClient

    with CommandClient(graph.command_address("door")) as client:
        again = client.call({"action": "unlock", "duration_s": 30}, id=acked["id"],
                            timeout_s=2.0)
    assert again == acked["ack"]
    assert all(r["locked"] for r in graph.read_jsonl(sim) if r["pid"] == second.pid)
    assert second.stop() == 0  # a clean stop leaves it locked too
    assert graph.read_jsonl(sim)[-1]["locked"] is True


def test_every_acknowledged_command_is_in_the_journal_after_a_kill(graph):
    actuator = graph.start_node("chime", LOG, {}, outputs=())
    rule = graph.commander("chime", {"ring": True}, every=0.0, count=100_000)
    acked = [json.loads(rule.next_line()) for _ in range(150)]
    # Kill the actuator and the journal's writer (the supervisor's role) mid-stream.
    actuator.kill()
    graph.writer.kill()
    rule.kill()
    while True:  # acks that were already on their way to the commander count too
        try:
            line = rule.next_line(timeout=0.5)
        except AssertionError:
            break
        if line.startswith("{"):
            acked.append(json.loads(line))
    journaled = {e.fields["id"] for e in graph.journal(kind="command_applied")}
    missing = [row["id"] for row in acked if row["id"] not in journaled]
    assert not missing, f"{len(missing)} acknowledged commands are not in the journal"
    assert len(journaled) >= len(acked)


def test_motor_stops_within_its_deadman_time_when_commands_stop(graph):
    sim = graph.state / "base.motor.jsonl"
    graph.start_node("base", MOTOR, {"deadman_s": 0.3})
    teleop = graph.commander("base", {"left": 0.5, "right": 0.5}, every=0.05, count=100_000)
    rows = [json.loads(teleop.next_line()) for _ in range(10)]
    assert all(r["ack"]["ok"] for r in rows)
    teleop.kill()
    last_ack = rows[-1]["t_ns"]
    while not teleop.lines.empty():  # acks already printed before the kill
        line = teleop.next_line()
        if line.startswith("{"):
            last_ack = max(last_ack, json.loads(line)["t_ns"])
    stop = graph.wait_for(
        lambda: next((r for r in graph.read_jsonl(sim)
                      if r["mono_ns"] > rows[0]["t_ns"] and not any(r["speeds"].values())),
                     None),
        timeout=10, what="the motors to stop")
    moving_for = (stop["mono_ns"] - last_ack) / 1e9
    assert moving_for <= 0.3 + LATE_S, moving_for
    (state,) = graph.wait_journal(kind="actuator_state")
    assert state.fields["cause"] == "deadman"


def test_a_missing_gpio_chip_is_one_clear_error(tmp_path):
    import os
    import subprocess
    import sys

    config = {"id": "door", "target": LOCK, "state_dir": str(tmp_path),
              "params": {"driver": "gpio", "chip": "/dev/gpiochip-missing", "line": "17"}}
    out = subprocess.run([sys.executable, "-m", "iotrt.launch"], capture_output=True, text=True,
                         env={**os.environ, "IOTRT_NODE_CONFIG": json.dumps(config)},
                         timeout=60)
    assert out.returncode == 1
    assert "cannot request GPIO line '17' on /dev/gpiochip-missing" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_ok_ack_without_the_journal(graph, tmp_path):
    sim = tmp_path / "door.jsonl"
    lock = graph.start_node("door", LOCK, {"max_unlock_s": 10.0, "sim_file": str(sim)})
    graph.writer.kill()  # the journal cannot be written any more
    from iotrt.command import CommandClient

    with CommandClient(graph.command_address("door")) as client:
        # One long attempt (no resend), so the answer the lock gives when it gives up is ours.
        ack = client.call({"action": "unlock", "duration_s": 5}, timeout_s=15.0, retries=0)
    assert ack["ok"] is False and "cannot be journaled" in ack["error"], ack
    # The lock refused the command it could not journal, never applied it, and keeps running.
    assert lock.popen.poll() is None
    assert [r["locked"] for r in graph.read_jsonl(sim)] == [True]
