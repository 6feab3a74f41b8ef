"""The bridge in a running graph against a real mosquitto, read by a client that behaves like
Home Assistant (conftest.HomeAssistant): it knows only the discovery prefix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hassim import Broker, HomeAssistant, needs_mosquitto
from helpers import Up, up_env, wait_for

from iotrt.control import call
from iotrt.graph import load_graph
from iotrt.journal import JournalReader

pytestmark = needs_mosquitto
ROOT = Path(__file__).resolve().parents[2]
FACES = Path(__file__).parent / "graph_nodes" / "door_faces.py"
CODE = "4711"

GRAPH = """
name: hadoor
supervisor:
  heartbeat_s: 0.5
nodes:
  - id: who
    run: {faces}
    params: {{file: faces.json, period_s: 0.1}}
    restart: never
    critical: false
  - id: rules
    kind: rules
    params: {{rules: door.rules.yaml}}
    inputs:
      faces: who/faces
      homeassistant: homeassistant/commands
    outputs: [events]
  - id: lock
    kind: lock
    params: {{max_unlock_s: 10, state_period_s: 0.5}}
    commands: {{commands: rules/lock}}
  - id: homeassistant
    kind: homeassistant
    params:
      host: 127.0.0.1
      port: {port}
      device_id: hadoor_test
      code_file: code.txt
      rules: door.rules.yaml
      keepalive_s: 5
      health_s: 0.5
      max_events: 3
      bridge:
        relock: {{template: "{{{{ value_json.relock_in_s | round(0) if value_json.relock_in_s else 0 }}}}",
                 name: Relock in, unit: s, every_s: 0.2}}
    inputs:
      lock: lock/state
      relock: lock/state
      events: rules/events
      faces: who/faces
    outputs: [commands]
    critical: false
"""


def _peers(address: str) -> int:
    """How many peers are connected to the ipc listener at `address` (/proc/net/unix lists
    each accepted connection under the listener's path, state 03: connected)."""
    path = address[len("ipc://"):]
    with open("/proc/net/unix") as f:
        return sum(1 for line in f
                   if line.rstrip().endswith(" " + path) and line.split()[5] == "03")


class Door:
    def __init__(self, tmp_path: Path, port: int) -> None:
        self.dir = tmp_path / "graph"
        self.dir.mkdir()
        (self.dir / "door.rules.yaml").write_text((ROOT / "configs" / "door.rules.yaml").read_text())
        code = self.dir / "code.txt"
        code.write_text(CODE + "\n")
        code.chmod(0o600)
        self.faces([])
        self.path = self.dir / "hadoor.yaml"
        self.path.write_text(GRAPH.format(faces=FACES, port=port))
        self.env = env = up_env(tmp_path / "run", tmp_path / "state")
        self.graph = load_graph(self.path, environ=env)
        self.up = Up(self.path, env, tmp_path / "up.log")
        self.up.wait_log("nodes up in", timeout=60)
        # NNG pub/sub drops what is published before the subscriber is connected, and the
        # bridge starts before the rules node it subscribes to (each commands the other), so it
        # redials with a growing backoff: the rules' first event was once lost, sent 0.4 s
        # after "all nodes up" with the bridge not yet connected.
        events = self.graph.output_address("rules", "events")
        wait_for(lambda: _peers(events), 20, "the bridge connected to the rules' events")

    def faces(self, names: list[str]) -> None:
        tmp = self.dir / "faces.json.tmp"
        tmp.write_text(json.dumps(names))
        tmp.replace(self.dir / "faces.json")

    def lock_changes(self) -> list[dict]:
        path = self.graph.state_dir / "lock.lock.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def journal(self, **filters) -> list:
        return JournalReader(self.graph.journal_path).query(**filters)

    def pid(self, node: str) -> int:
        rows = call(self.graph.control_address, "ps")["nodes"]
        return next(r["pid"] for r in rows if r["node"] == node and r["state"] == "running")

    def close(self) -> None:
        """Stop the graph as `iotrt down` does (SIGTERM), then make sure it is gone."""
        if self.up.proc.poll() is None:
            self.up.proc.terminate()
            try:
                self.up.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self.up.close()


@pytest.fixture
def door(tmp_path, broker):
    d = Door(tmp_path, broker.port)
    yield d
    d.close()


def test_home_assistant_follows_discovery_to_unlock_through_the_rule(door, homeassistant):
    ha = homeassistant
    wait_for(lambda: len([t for t in ha.configs if "/sensor/" in t]) >= 6, 20,
             "discovery configs incl. node health")
    lock = ha.entity("lock")
    ha.wait_state(lock, "LOCKED")
    wait_for(lambda: ha.available(lock), 10, "the lock to be available")
    assert lock["code_format"], "a code is configured, so HA must ask for it"

    # garbage on the command topic: rejected, counted, and the bridge carries on; a message
    # far above max_payload never even reaches it (MQTT 5 maximum packet size: the broker
    # drops it), one just above is refused by the bridge
    for junk in (b"x" * 1_000_000, b"x" * 600, b"\xff\x00", b'{"command": ',
                 b'{"command": ["UNLOCK"]}', b"OPEN_SESAME"):
        ha.client.publish(lock["command_topic"], junk, qos=1).wait_for_publish(5)
    ha.wait_state(ha.entity("sensor", "MQTT commands rejected"), "5")
    ha.press(lock, "UNLOCK", code="0000")           # wrong code: the rule refuses
    ha.press(lock, "UNLOCK")                        # no code at all: refused too
    ha.press(lock, "UNLOCK", code=CODE)             # the same path, in order, is accepted
    ha.wait_state(lock, "UNLOCKED")
    # The bridge's log lines (through the supervisor) and its and the rules' journal records
    # (sent without waiting) travel apart from the command: the state can be seen first.
    refused = "Home Assistant asks: unlock lock (code missing or wrong)"
    door.up.wait_log(refused, count=2)
    assert door.up.text.count(refused) == 2
    wait_for(lambda: len(door.journal(kind="ha_command")) >= 3, 10, "the 3 requests journaled")
    assert [e.fields["code_ok"] for e in door.journal(kind="ha_command")] == [False, False, True]
    assert [c["locked"] for c in door.lock_changes()] == [True, False]
    applied = door.journal(kind="command_applied")
    assert len(applied) == 1 and applied[0].fields["src"] == "rules"
    assert applied[0].fields["command"]["who"] == "homeassistant"
    wait_for(lambda: door.journal(kind="rule_fired"), 10, "the rule's firing journaled")
    assert [e.fields["rule"] for e in door.journal(kind="rule_fired")] == \
        ["unlock_from_home_assistant"]
    ha.wait_state(lock, "LOCKED", timeout=15)       # the lock re-locks by itself after 5 s
    events = ha.wait_events(ha.entity("event"), 1)
    assert json.loads(events[0]) == {"event_type": "unlocked", "who": "homeassistant"}


def test_states_follow_the_door_and_the_bridge_health(door, homeassistant):
    ha = homeassistant
    wait_for(lambda: len(ha.configs) >= 9, 20, "discovery configs")
    lock, who = ha.entity("lock"), ha.entity("sensor", "Who is at the door")
    faces = ha.entity("sensor", "Faces in view")
    ha.wait_state(who, "none")
    door.faces(["owner"])                            # the owner arrives: the rules unlock
    ha.wait_state(who, "owner")
    ha.wait_state(lock, "UNLOCKED")
    assert ha.state(faces) == "1"
    relock = ha.entity("sensor", "Relock in")       # a bridged topic, with the user's template
    assert relock["unit_of_measurement"] == "s"
    wait_for(lambda: float(ha.state(relock) or 0) > 0, 10, "a bridged relock countdown")
    door.faces([])
    ha.wait_state(who, "none")
    ha.wait_state(lock, "LOCKED", timeout=15)
    health = ha.entity("sensor", "lock health")
    assert health["entity_category"] == "diagnostic" and ha.state(health) == "running"

    # Home Assistant restarted: it says so, and the bridge publishes everything again
    first = next(iter(ha.configs))
    before = len(ha.history[first])
    ha.client.publish("homeassistant/status", "online", qos=1)
    wait_for(lambda: len(ha.history[first]) > before, 10, "the configs again")

    # a node dies: the entities it feeds become unavailable, its health says so
    assert ha.available(who)
    os.kill(door.pid("who"), signal.SIGKILL)        # restart: never
    ha.wait_state(ha.entity("sensor", "who health"), "failed")
    wait_for(lambda: not ha.available(who), 10, "the who sensor unavailable")
    assert ha.available(lock)


def test_last_will_fires_when_the_bridge_is_killed(door, homeassistant):
    ha = homeassistant
    wait_for(lambda: len(ha.configs) >= 9, 20, "discovery configs")
    lock = ha.entity("lock")
    status = lock["availability"][0]["topic"]
    wait_for(lambda: ha.retained.get(status) == b"online", 10, "birth message")
    t0 = time.monotonic()
    os.kill(door.pid("homeassistant"), signal.SIGKILL)
    # keepalive 5 s: the broker gives up after 1.5x keepalive and publishes the last will
    wait_for(lambda: ha.retained.get(status) == b"offline", 12, "the last will")
    assert time.monotonic() - t0 < 9
    assert not ha.available(lock)
    # the supervisor restarts the bridge, which says online again
    wait_for(lambda: ha.retained.get(status) == b"online", 30, "the new birth message")


def test_broker_dies_during_an_unlock(tmp_path, door, broker, homeassistant):
    ha = homeassistant
    wait_for(lambda: len(ha.configs) >= 9, 20, "discovery configs")
    lock = ha.entity("lock")
    ha.wait_state(lock, "LOCKED")
    ha.press(lock, "UNLOCK", code=CODE)
    ha.wait_state(lock, "UNLOCKED")
    broker.kill()                                   # mid-unlock
    unlocked = [c for c in door.lock_changes() if c["locked"] is False][0]
    # the lock re-locks on time without the broker
    relock = wait_for(lambda: [c for c in door.lock_changes()
                               if c["locked"] and c["mono_ns"] > unlocked["mono_ns"]], 10,
                      "the re-lock")[0]
    assert 4.8 <= (relock["mono_ns"] - unlocked["mono_ns"]) / 1e9 <= 5.8
    # events while the broker is away: the newest max_events (3) are kept, the rest counted
    door.faces(["owner"])                           # unlocks at once and every 4 s after
    wait_for(lambda: len(door.journal(kind="rule_fired")) >= 1 + 4, 30, "four more unlocks")
    door.faces([])
    events = ha.entity("event")
    ha.close()
    again = Broker(tmp_path, port=broker.port)      # no persistence: every retained is gone
    try:
        ha2 = HomeAssistant(again.port)
        # It knew the event topic from before (from discovery) and subscribes at once: the
        # bridge, reconnecting with backoff, comes later, as Home Assistant would be there first.
        ha2.follow(events)
        try:
            wait_for(lambda: len(ha2.configs) >= 8, 30, "discovery configs republished")
            lock2 = ha2.entity("lock")
            ha2.wait_state(lock2, "LOCKED", timeout=15)
            wait_for(lambda: ha2.available(lock2), 10, "availability republished")
            queued = ha2.wait_events(events, 3)
            assert [json.loads(e)["event_type"] for e in queued] == ["unlocked"] * 3
            stats = ha2.entity("sensor", "MQTT events dropped")
            wait_for(lambda: ha2.state(stats) == str(len(door.journal(kind="rule_fired")) - 1 - 3),
                     10, "the dropped events counted")
        finally:
            ha2.close()
    finally:
        again.kill()


def test_forget_clears_the_device_from_the_broker(tmp_path, broker, homeassistant):
    door = Door(tmp_path, broker.port)
    try:
        wait_for(lambda: len(homeassistant.configs) >= 8, 20, "discovery configs")
        assert subprocess.run([sys.executable, "-m", "iotrt", "mqtt", "forget", str(door.path)],
                              env=door.env, capture_output=True, text=True).returncode == 1, \
            "forget must refuse while the graph runs (its bridge would publish them again)"
    finally:
        door.close()
    out = subprocess.run([sys.executable, "-m", "iotrt", "mqtt", "forget", str(door.path)],
                         env=door.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "of device hadoor_test" in out.stdout
    wait_for(lambda: not homeassistant.configs, 10, "every config removed")
    # the states went too: a new subscriber finds nothing retained of the device
    late = HomeAssistant(broker.port, prefix="iotrt")
    try:
        late.sync()
        assert [t for t, v in late.retained.items() if v] == []
    finally:
        late.close()
