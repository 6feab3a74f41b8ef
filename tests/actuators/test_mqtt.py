"""MQTT actuator against a real mosquitto broker started on a free loopback port."""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import time

import pytest

mqtt = pytest.importorskip("paho.mqtt.client")

from iotrt.nodes.action.actuator import execute  # noqa: E402
from iotrt.nodes.action.mqtt import MqttPublish  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, tmp_path, port: int | None = None) -> None:
        self.port = port or _free_port()
        conf = tmp_path / f"mosquitto-{self.port}.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        f"persistence false\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not start: {self.proc.stderr.read()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    yield b
    b.stop()


def _subscriber(port: int, topic: str) -> tuple[mqtt.Client, queue.Queue]:
    got: queue.Queue = queue.Queue()
    subscribed = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, msg: got.put((msg.topic, msg.payload, msg.retain))
    client.on_subscribe = lambda *a: subscribed.put(True)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    subscribed.get(timeout=10)
    return client, got


def _publisher(port: int, **kw) -> MqttPublish:
    pub = MqttPublish("127.0.0.1", port, kw.pop("topic", "home/{room}/event"), **kw)
    assert pub.connected.wait(10)
    return pub


def test_publishes_json_and_the_broker_confirms(broker):
    sub, got = _subscriber(broker.port, "home/#")
    pub = _publisher(broker.port, qos=1)
    try:
        kind, ack = execute(pub, {"room": "hall", "person": "ana"})
        assert kind == "command_applied" and ack["topic"] == "home/hall/event"
        topic, payload, _ = got.get(timeout=10)
        assert topic == "home/hall/event"
        assert json.loads(payload) == {"room": "hall", "person": "ana"}
        execute(pub, {"room": "hall", "payload": "ring"})
        assert got.get(timeout=10)[1] == b"ring"
    finally:
        pub.close()
        sub.loop_stop()
        sub.disconnect()


def test_retained_message_reaches_a_late_subscriber(broker):
    pub = _publisher(broker.port, topic="door/state", qos=1, retain=True)
    try:
        assert execute(pub, {"payload": "locked"})[1]["ok"]
    finally:
        pub.close()
    sub, got = _subscriber(broker.port, "door/state")
    try:
        assert got.get(timeout=10) == ("door/state", b"locked", True)
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_broker_down_fails_the_command_then_reconnects(tmp_path, broker):
    pub = _publisher(broker.port, topic="t", qos=0, timeout_s=0.5)
    try:
        broker.stop()
        deadline = time.monotonic() + 10
        while pub.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        kind, ack = execute(pub, {"x": 1})
        assert kind == "command_failed" and "not connected" in ack["error"]
        again = Broker(tmp_path, port=broker.port)
        try:
            assert pub.connected.wait(15), "paho did not reconnect"
            assert execute(pub, {"x": 2})[1]["ok"]
        finally:
            again.stop()
    finally:
        pub.close()


def test_bad_topic_and_missing_field(broker):
    with pytest.raises(ValueError, match="wildcards"):
        MqttPublish("127.0.0.1", broker.port, "home/+/x")
    pub = _publisher(broker.port)
    try:
        kind, ack = execute(pub, {"person": "ana"})
        assert kind == "command_refused" and "needs the field 'room'" in ack["error"]
        kind, ack = execute(pub, {"room": "#"})
        assert kind == "command_refused" and "wildcard" in ack["error"]
    finally:
        pub.close()
