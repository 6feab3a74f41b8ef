"""The shipped door graph with its bridge turned on, as docs/home-assistant.md says: the sim
doorstep's owner and visitor show up in Home Assistant (the stand-in that follows discovery)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from hassim import needs_mosquitto
from helpers import wait_for

pytestmark = needs_mosquitto
ROOT = Path(__file__).resolve().parents[2]
DOOR = ROOT / "configs" / "door.yaml"


def test_the_door_appears_in_home_assistant(tmp_path, broker, homeassistant):
    ha = homeassistant
    run_dir = Path("/tmp") / f"iotrt-ha-{os.getpid()}"        # short: ipc paths max 107 bytes
    env = dict(os.environ, IOTRT_STATE_DIR=str(tmp_path / "state"),
               IOTRT_RUNTIME_DIR=str(run_dir), CAMERA_SOURCE="sim", CAMERA_FPS="15",
               MQTT_HOST="127.0.0.1", MQTT_PORT=str(broker.port))
    log = open(tmp_path / "up.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "iotrt", "up", str(DOOR)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: any("/lock/" in t for t in ha.configs) and ha.history.get(
            ha.entity("lock")["state_topic"]), 120, "the door's lock in Home Assistant")
        lock, who = ha.entity("lock"), ha.entity("sensor", "Who is at the door")
        event, image = ha.entity("event"), ha.entity("image")
        assert sorted(event["event_types"]) == ["unlocked", "visitor"]   # from door.rules.yaml
        assert "code_format" not in lock            # no code configured: HA cannot unlock
        # the sim doorstep: the owner comes (the rules unlock), then a visitor rings
        wait_for(lambda: b"owner" in ha.history.get(who["state_topic"], []), 120, "the owner")
        ha.wait_state(lock, "UNLOCKED", timeout=30)
        wait_for(lambda: any(json.loads(p)["event_type"] == "visitor"
                             for p in ha.history.get(event["state_topic"], [])), 120,
                 "a visitor event")
        wait_for(lambda: (ha.retained.get(image["image_topic"]) or b"")[:2] == b"\xff\xd8", 10,
                 "a JPEG snapshot")
        assert ha.available(lock)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)
    # a clean stop says offline at once (no need to wait for the last will)
    wait_for(lambda: ha.retained.get(lock["availability"][0]["topic"]) == b"offline", 10,
             "offline after the stop")
