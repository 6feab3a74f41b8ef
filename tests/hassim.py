"""For tests/homeassistant (a module, not a conftest, so tests can import it: see helpers.py).

A real mosquitto on a free loopback port, and a client that reads the broker the way Home
Assistant does: it follows the discovery configs' topics and renders their templates with
jinja2 (Home Assistant's template engine), never a topic name of its own."""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

mqtt = pytest.importorskip("paho.mqtt.client")
jinja2 = pytest.importorskip("jinja2")

from helpers import wait_for  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed "
                                                               "(.ci/run installs it)")
PREFIX = "homeassistant"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto without persistence: a restart loses every retained message, the worst case
    for a bridge that must republish."""

    def __init__(self, tmp_path: Path, port: int | None = None, extra: str = "") -> None:
        self.port = port or free_port()
        conf = tmp_path / f"mosquitto-{self.port}.conf"
        # `user`: as root, mosquitto would switch to the user "mosquitto", who cannot read the
        # test's private files (certificates, password file)
        conf.write_text(f"listener {self.port} 127.0.0.1\nuser {getpass.getuser()}\n"
                        f"persistence false\n{extra or 'allow_anonymous true'}\n")
        self.log = tmp_path / f"mosquitto-{self.port}.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf), "-v"], stdout=out,
                                         stderr=subprocess.STDOUT)
        try:
            wait_for(self._listening, 10, "mosquitto to listen")
        except AssertionError:
            self.kill()
            raise

    def _listening(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def render(template: str, **variables) -> str:
    """A template as Home Assistant renders it (jinja2; `value_json` is the payload as JSON)."""
    return jinja2.Environment().from_string(template).render(**variables)


class HomeAssistant:
    """What Home Assistant does with MQTT discovery, reduced to what the tests look at."""

    def __init__(self, port: int, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self.configs: dict[str, dict] = {}          # config topic -> config
        self.retained: dict[str, bytes] = {}        # every topic's latest payload
        self.history: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()
        self._subscribed: set[str] = set()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _connected(self, client, userdata, flags, rc, props) -> None:
        client.subscribe(f"{self.prefix}/#", qos=1)
        with self._lock:
            for topic in self._subscribed:
                client.subscribe(topic, qos=1)

    def _message(self, client, userdata, msg) -> None:
        with self._lock:
            self.retained[msg.topic] = msg.payload
            self.history.setdefault(msg.topic, []).append(msg.payload)
        if msg.topic.startswith(self.prefix + "/") and msg.topic.endswith("/config"):
            if msg.payload:
                config = json.loads(msg.payload)
                self.configs[msg.topic] = config
                self.follow(config)
            else:
                self.configs.pop(msg.topic, None)

    def follow(self, config: dict) -> None:
        """Subscribe to every topic a config names, as Home Assistant does."""
        topics = [config[k] for k in ("state_topic", "image_topic") if k in config]
        topics += [a["topic"] for a in config.get("availability", [])]
        with self._lock:
            new = [t for t in topics if t not in self._subscribed]
            self._subscribed.update(new)
        for t in new:
            self.client.subscribe(t, qos=1)

    def entity(self, component: str, name: str | None = None) -> dict:
        """The config of the (only, or the named) entity of a component."""
        found = [c for t, c in self.configs.items()
                 if t.split("/")[1] == component and (name is None or c.get("name") == name)]
        assert len(found) == 1, f"{component} {name}: {found}"
        return found[0]

    def state(self, config: dict) -> str | None:
        """The entity's state as Home Assistant shows it (its value_template applied)."""
        payload = self.retained.get(config["state_topic"])
        if payload is None:
            return None
        template = config.get("value_template")
        if template is None:
            return payload.decode()
        return render(template, value=payload.decode(), value_json=json.loads(payload))

    def available(self, config: dict) -> bool:
        """availability_mode all: every availability topic says online."""
        return all(self.retained.get(a["topic"]) == a.get("payload_available", "online").encode()
                   for a in config["availability"])

    def wait_state(self, config: dict, want: str, timeout: float = 30.0) -> None:
        wait_for(lambda: self.state(config) == want, timeout,
                 f"{config['name']} = {want!r} (now {self.state(config)!r})")

    def wait_events(self, config: dict, count: int, timeout: float = 30.0) -> list[bytes]:
        """The payloads seen on an event entity's state topic, once there are `count`."""
        topic = config["state_topic"]
        return wait_for(lambda: len(self.history.get(topic, [])) >= count and
                        list(self.history[topic]), timeout, f"{count} event(s) on {topic}")

    def sync(self, timeout: float = 10.0) -> None:
        """Wait until every message the broker had for us has arrived (retained ones too): a
        message published now arrives after them."""
        topic = f"{self.prefix}/sync/{uuid.uuid4().hex}"
        wait_for(self.client.is_connected, timeout, "connected to the broker")
        self.client.publish(topic, b"", qos=1)
        wait_for(lambda: topic in self.history, timeout, "the sync message")

    def press(self, config: dict, command: str, code: str | None = None) -> None:
        """Send a command as Home Assistant does: the command_template with value and code."""
        template = config.get("command_template")
        payload = render(template, value=command, code=code) if template else command
        self.client.publish(config["command_topic"], payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
