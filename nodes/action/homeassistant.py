"""Home Assistant bridge: the graph appears in Home Assistant by itself, over MQTT discovery.

The node publishes one device with its entities (see ``hadiscovery``): a lock per lock
actuator, an event entity for the rules' events, who is at the door, faces in view, a snapshot
image, each node's health (diagnostic) and any topic the graph chooses to bridge. Commands from
Home Assistant (the lock's LOCK/UNLOCK) never reach an actuator: they come out of this node as
messages on its ``commands`` output, ``{entity: lock, lock, command, code_ok, source}``, and a
rule decides (configs/door.rules.yaml). The lock's own ``state`` output, published after it has
applied and acknowledged a command, is what Home Assistant then shows.

With ``host`` empty the bridge is off (the door graph ships that way). User guide:
docs/home-assistant.md.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import os
import socket
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from iotrt import __version__, errors
from iotrt.control import CONTROL_NAME, ControlError, call
from iotrt.node import MAX_TIMER_S, Node, NodeSpec, Param
from iotrt.nodes.action.actuator import DriverError
from iotrt.nodes.action.hadiscovery import (
    LOCK_COMMANDS,
    OFFLINE,
    ONLINE,
    Layout,
    bridge_problem,
    event_payload,
    health_of,
    lock_payload,
    make_layout,
    slug,
    who_payloads,
)
from iotrt.nodes.action.mqttlink import BrokerConfig, MqttLink, connect_properties, make_client

SPEC = NodeSpec(
    doc="Home Assistant over MQTT: discovery, states, availability; its commands go to the rules",
    inputs={"*": "the params `locks`, `events`, `faces`, `image` and `bridge` say what each is"},
    outputs={"commands": "{entity: lock, lock: name, command: lock|unlock, code_ok: bool, "
                         "source: homeassistant}"},
    params=[
        Param("host", str, "", "MQTT broker host; empty: the bridge is off"),
        Param("port", int, 0, "broker port (0: 8883 with TLS, else 1883)", min=0, max=65535),
        Param("tls", bool, None, "TLS, verifying the broker (default: on unless the host is "
                                 "this machine)"),
        Param("ca_file", str, "", "CA certificate(s) for the broker (default: the system's)"),
        Param("cert_file", str, "", "client certificate (PEM), if the broker asks for one"),
        Param("key_file", str, "", "the client certificate's key (PEM)"),
        Param("username", str, "", "MQTT user name"),
        Param("password_env", str, "", "environment variable holding the password"),
        Param("password_file", str, "", "file holding the password (e.g. a systemd credential)"),
        Param("client_id", str, "", "MQTT client id (default: iotrt-<device id>)"),
        Param("keepalive_s", int, 15, "MQTT keepalive: the last will fires within 1.5x this",
              min=5, max=3600),
        Param("discovery_prefix", str, "homeassistant", "Home Assistant's discovery prefix"),
        Param("base_topic", str, "", "root of the state topics (default: iotrt/<device id>)"),
        Param("device_id", str, "", "unique device id (default: iotrt_<hostname>_<graph>)"),
        Param("device_name", str, "", "name in Home Assistant (default: the graph's name)"),
        Param("configuration_url", str, "", "link shown on the device page (the web node)"),
        Param("locks", list, ["lock"], "inputs carrying a lock actuator's state output"),
        Param("events", list, ["events"], "inputs carrying the rules' events"),
        Param("event_types", list, [], "event types (default: the `event` values the rules "
                                       "file publishes)"),
        Param("rules", str, "", "the rules file to read event types from"),
        Param("faces", str, "faces", "input carrying the identity node's faces"),
        Param("faces_every_s", float, 0.5, "publish who/faces at most this often", min=0.05,
              max=60),
        Param("image", str, "image", "input carrying camera frames (for the snapshot)"),
        Param("image_width", int, 320, "snapshot width in pixels", min=16, max=4096),
        Param("bridge", dict, {}, "more inputs to show as sensors: input -> value_template, or "
                                  "{template, name, unit, device_class, every_s}",
              check=bridge_problem),
        Param("code_env", str, "", "environment variable holding the unlock code"),
        Param("code_file", str, "", "file holding the unlock code"),
        Param("health_s", float, 5.0, "ask the supervisor for node health this often (0: off)",
              min=0, max=MAX_TIMER_S),
        Param("max_events", int, 100, "events kept while the broker is away", min=1,
              max=100_000),
        Param("max_payload", int, 512, "longest command accepted (bytes)", min=16, max=65536),
        Param("max_state_bytes", int, 65536, "longest bridged state (bytes)", min=64,
              max=1 << 20),
    ],
    # `iotrt mqtt forget GRAPH` (defined below)
    forget=lambda params, graph, timeout_s: forget(params, graph, timeout_s),
)

MAX_BAD_CODES = 5           # wrong unlock codes within BAD_CODE_WINDOW_S ...
BAD_CODE_WINDOW_S = 60.0    # ... refuse every code for the rest of that window
JOURNAL_PER_MIN = 30        # Home Assistant requests journaled per minute, at most
MAX_IN_FLIGHT = 100         # requests handed to the node's loop and not yet handled


class BadCommand(errors.TransportError, ValueError):
    """A command from MQTT that is not accepted (too long, not JSON, unknown, bad field)."""


def read_secret(params: dict, env_param: str, file_param: str, log=None) -> str:
    """A secret from the env var or file the params name ("" if neither is set)."""
    if params[env_param] and params[file_param]:
        raise DriverError(f"set {env_param} or {file_param}, not both")
    if params[env_param]:
        value = os.environ.get(params[env_param], "")
        if not value:
            raise DriverError(f"{env_param} names ${params[env_param]}, which is not set in "
                              f"the node's environment (the graph's env: or the service's "
                              f"EnvironmentFile=)")
        return value
    if params[file_param]:
        path = Path(params[file_param])
        try:
            if path.stat().st_mode & 0o077 and log is not None:
                log.warning("%s %s is readable by other users: chmod 600 it", file_param, path)
            return path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise DriverError(f"cannot read {file_param} {path}: {exc}") from exc
    return ""


def broker_config(params: dict, device_id: str, log=None) -> BrokerConfig:
    """How to reach the broker, from the node's params (DriverError: a secret is missing)."""
    host = params["host"]
    tls = params["tls"] if params["tls"] is not None else not is_local(host)
    if not tls and not is_local(host) and log is not None:
        log.warning("tls: false to %s: the password and the unlock code cross the network in "
                    "clear", host)
    return BrokerConfig(
        host=host, port=params["port"] or (8883 if tls else 1883),
        client_id=params["client_id"] or f"iotrt-{device_id}"[:64],
        username=params["username"],
        password=read_secret(params, "password_env", "password_file", log),
        tls=tls, ca_file=params["ca_file"], cert_file=params["cert_file"],
        key_file=params["key_file"], keepalive_s=params["keepalive_s"],
        max_packet=params["max_payload"] + 1024)    # + the topic and the packet's header


def device_id(params: dict, graph: str) -> str:
    return slug(params["device_id"] or f"iotrt_{socket.gethostname()}_{graph}")


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ForgetError(errors.IotrtError, RuntimeError):
    """The device's retained topics could not be cleared (no broker, refused, no answer)."""


def forget(params: dict, graph: str, timeout_s: float) -> str:
    """Remove the device from Home Assistant (the SPEC's `forget`, `iotrt mqtt forget`).

    Home Assistant keeps a discovered device as long as its retained discovery configs stay on
    the broker. This connects with the node's own params (host, TLS, credentials), finds every
    retained config and state topic of the device, and clears each one (an empty retained
    message), which makes Home Assistant delete the entities. Returns a one-line summary.
    """
    if not params["host"]:
        raise ForgetError("its param host is empty: it never published anything")
    dev = device_id(params, graph)
    layout = Layout(graph=graph, device_id=dev, device_name=dev,
                    prefix=params["discovery_prefix"].strip("/"),
                    base=params["base_topic"].strip("/"))
    try:
        cfg = broker_config(params, dev)
        # its own client id: the bridge's would take over (and end) a running bridge's session
        cfg = dataclasses.replace(cfg, client_id=f"{cfg.client_id[:56]}-forget")
        client = make_client(cfg)
    except DriverError as exc:
        raise ForgetError(str(exc)) from exc
    marker = f"{layout.base}/forget-{uuid.uuid4().hex}"
    retained: set[str] = set()
    done, failed = threading.Event(), []

    def connected(c, userdata, flags, rc, props) -> None:
        if rc.is_failure:
            failed.append(f"the broker refused the connection: {rc}")
            done.set()
            return
        c.subscribe([(layout.config_wildcard, 1), (f"{layout.base}/#", 1)])

    def subscribed(c, userdata, mid, rcs, props) -> None:
        # Retained messages come right after the subscription; a message published now
        # comes back after them, so its arrival means they are all in.
        c.publish(marker, b"", qos=1)

    def message(c, userdata, msg) -> None:
        if msg.topic == marker:
            done.set()
        elif msg.retain and msg.payload:
            retained.add(msg.topic)

    client.on_connect, client.on_subscribe, client.on_message = connected, subscribed, message
    try:
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s,
                       properties=connect_properties(cfg))
    except OSError as exc:
        raise ForgetError(f"cannot reach the broker {cfg.where}: {exc}") from exc
    client.loop_start()
    try:
        if not done.wait(timeout_s) or failed:
            raise ForgetError(failed[0] if failed else
                              f"no answer from the broker {cfg.where} within {timeout_s:g} s")
        # configs first: Home Assistant removes the entities before their states vanish
        for topic in sorted(retained, key=lambda t: not t.endswith("/config")):
            client.publish(topic, b"", qos=1, retain=True).wait_for_publish(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return f"cleared {len(retained)} retained topic(s) of device {dev}"


class CommandGate:
    """Turns raw MQTT command payloads into graph messages; counts and explains rejections.
    Runs on paho's thread."""

    def __init__(self, layout: Layout, code: str, max_payload: int, clock=time.monotonic):
        self.topics = layout.command_topics()
        self.code = code.encode()
        self.max_payload = max_payload
        self.rejected = 0
        self.bad_codes: deque[float] = deque()
        self._clock = clock

    def parse(self, topic: str, payload: bytes) -> dict[str, Any]:
        """The message for the rules, or BadCommand (counted)."""
        try:
            return self._parse(topic, payload)
        except BadCommand:
            self.rejected += 1
            raise

    def _parse(self, topic: str, payload: bytes) -> dict[str, Any]:
        lock = self.topics.get(topic)
        if lock is None:
            raise BadCommand(f"no entity listens on {topic!r}")
        if len(payload) > self.max_payload:
            raise BadCommand(f"{len(payload)} bytes on {topic} (at most {self.max_payload})")
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise BadCommand(f"not UTF-8 on {topic}") from exc
        code: Any = None
        if text.startswith("{"):
            try:
                body = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BadCommand(f"bad JSON on {topic}: {exc}") from exc
            except RecursionError:
                raise BadCommand(f"bad JSON on {topic}: nested too deep") from None
            if not isinstance(body, dict):
                raise BadCommand(f"a JSON command on {topic} must be an object")
            text, code = body.get("command"), body.get("code")
        if not isinstance(text, str) or text not in LOCK_COMMANDS:
            raise BadCommand(f"unknown command {str(text)[:40]!r} on {topic} "
                             f"(send {' or '.join(LOCK_COMMANDS)})")
        if code is not None and not isinstance(code, str):
            raise BadCommand(f"'code' on {topic} must be a string")
        try:
            # JSON can carry a lone surrogate ("\ud800"), which no code is made of
            code_bytes = None if code is None else code.encode()
        except UnicodeEncodeError:
            raise BadCommand(f"'code' on {topic} is not valid Unicode") from None
        return {"entity": "lock", "lock": lock, "command": LOCK_COMMANDS[text],
                "code_ok": self._check_code(code_bytes), "source": "homeassistant"}

    def _check_code(self, code: bytes | None) -> bool:
        if not self.code or code is None:
            return False
        now = self._clock()
        while self.bad_codes and self.bad_codes[0] < now - BAD_CODE_WINDOW_S:
            self.bad_codes.popleft()
        if len(self.bad_codes) >= MAX_BAD_CODES:
            return False    # too many wrong codes lately: even the right one waits
        if hmac.compare_digest(code, self.code):
            return True
        self.bad_codes.append(now)
        return False


def layout_from(node: Node) -> Layout:
    """What to expose, from the params and the node's wiring (LayoutError when wrong)."""
    cfg = node.config
    graph = cfg.graph or node.id
    layout = make_layout(node.params, graph, device_id(node.params, graph), __version__,
                         {name: ep.topic for name, ep in cfg.inputs.items()})
    unused = [n for n in cfg.inputs if n not in layout.uses()]
    if unused:
        node.log.warning("inputs %s are not used: name them in locks, events, faces, image or "
                         "bridge", ", ".join(unused))
    return layout


class Bridge:
    """The node's logic between the graph and an ``MqttLink`` (pure of sockets itself)."""

    def __init__(self, node: Node, layout: Layout, link: Any, gate: CommandGate) -> None:
        self.node, self.layout, self.link, self.gate = node, layout, link, gate
        self.nodes: list[str] = []
        self.frame: Any = None
        self.sent_at: dict[str, float] = {}                 # topic -> when last published
        self.pending: dict[str, tuple[str, float]] = {}     # topic -> (newest, every_s)
        self.journaled: deque[float] = deque()      # when the last requests were journaled
        self.in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self.unjournaled = 0
        self.stats = {"rejected_commands": 0, "dropped_events": 0, "bad_messages": 0}
        self._last_log = 0.0

    def start(self) -> None:
        for topic, config in self.layout.configs(self.nodes).items():
            self.link.set_state(topic, json.dumps(config))
        self.publish_stats()

    def warn(self, text: str, *args: Any) -> None:
        """Rate-limited: a flood of bad input must not flood the log."""
        now = time.monotonic()
        if now - self._last_log >= 5.0:
            self._last_log = now
            self.node.log.warning(text, *args)

    def publish_stats(self) -> None:
        self.stats["rejected_commands"] = self.gate.rejected
        self.stats["dropped_events"] = self.link.dropped_events
        self.link.set_state(self.layout.stats_topic, json.dumps(self.stats))

    # -- from Home Assistant (paho's thread) ---------------------------------------------

    def on_command(self, topic: str, payload: bytes) -> None:
        if topic == f"{self.layout.prefix}/status":
            if payload == b"online":        # Home Assistant (re)started
                self.link.republish()
            return
        try:
            message = self.gate.parse(topic, payload)
        except BadCommand as exc:
            self.warn("rejected an MQTT command: %s", exc)
            self.publish_stats()
            return
        if not self.in_flight.acquire(blocking=False):
            self.gate.rejected += 1
            self.warn("rejected an MQTT command: %d requests are already waiting for the node",
                      MAX_IN_FLIGHT)
            self.publish_stats()
            return
        self.node.post("command", message)      # the node's loop publishes it (on_post)

    def on_post(self, name: str, message: Any) -> None:
        """A request from Home Assistant, on the node's loop: journal it, hand it to the rules."""
        self.in_flight.release()
        self.node.log.info("Home Assistant asks: %s %s (code %s); the rules decide",
                           message["command"], message["lock"],
                           "ok" if message["code_ok"] else "missing or wrong")
        self.journal(message)
        self.node.publish("commands", message, stamp_ns=time.monotonic_ns())

    def journal(self, message: dict) -> None:
        """Each request goes to the journal (who asked to unlock, with or without the code),
        at most JOURNAL_PER_MIN a minute so a flood cannot fill it; the rest is counted."""
        now = time.monotonic()
        while self.journaled and self.journaled[0] < now - 60:
            self.journaled.popleft()
        if len(self.journaled) >= JOURNAL_PER_MIN:
            self.unjournaled += 1
            return
        self.journaled.append(now)
        self.node.record("ha_command", **message, not_journaled_before=self.unjournaled)
        self.unjournaled = 0

    # -- from the graph (the node's loop) ------------------------------------------------

    def on_input(self, name: str, data: Any) -> None:
        L = self.layout
        if name in L.locks:
            state = lock_payload(data)
            if state is None:
                return self.bad(name, "not a lock state")
            self.link.set_state(L.lock_state_topic(name), state)
        elif name in L.events:
            event = event_payload(data, L.event_types, self.node.params["max_state_bytes"])
            if event is None:
                return self.bad(name, f"no event type of {list(L.event_types)}")
            self.link.send_event(L.event_topic(name), event)
            self.snapshot()
            self.publish_stats()
        elif L.faces is not None and name == L.faces[0]:
            who = who_payloads(data)
            if who is None:
                return self.bad(name, "no 'faces' list")
            # A detector flickering at 30 Hz must not flood the broker: at most every
            # faces_every_s, the newest value wins.
            every = self.node.params["faces_every_s"]
            self.throttle(L.who_topic, who[0], every)
            self.throttle(L.faces_topic, who[1], every)
        elif L.image is not None and name == L.image[0]:
            self.frame = data           # encoded only when an event asks for a snapshot
        elif name in L.bridged:
            try:
                text = json.dumps(data, allow_nan=False)
            except (TypeError, ValueError):
                return self.bad(name, "not JSON-able (arrays and bytes are not bridged)")
            if len(text) > self.node.params["max_state_bytes"]:
                return self.bad(name, f"{len(text)} bytes as JSON")
            self.throttle(L.bridge_topic(name), text, L.bridged[name][0].every_s)

    def throttle(self, topic: str, payload: str, every_s: float) -> None:
        self.pending[topic] = (payload, every_s)
        self.flush(time.monotonic())

    def flush(self, now: float) -> None:
        """Publish each pending state whose interval has passed (also the node's timer)."""
        for topic, (payload, every_s) in list(self.pending.items()):
            if now - self.sent_at.get(topic, -1e18) >= every_s:
                self.sent_at[topic] = now
                del self.pending[topic]
                self.link.set_state(topic, payload)

    def bad(self, name: str, why: str) -> None:
        self.stats["bad_messages"] += 1
        self.warn("skipped a message on input %r: %s", name, why)

    def snapshot(self) -> None:
        frame = self.frame
        if frame is None or self.layout.image is None:
            return
        import cv2
        import numpy as np

        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 \
                or frame.dtype != np.uint8:
            return self.bad(self.layout.image[0], "not an RGB uint8 frame")
        width = self.node.params["image_width"]
        h, w = frame.shape[:2]
        small = cv2.resize(frame, (width, max(1, round(h * width / w))),
                           interpolation=cv2.INTER_AREA) if w > width else frame
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            self.link.set_state(self.layout.image_topic, jpeg.tobytes())

    def on_health(self, rows: list[dict]) -> None:
        nodes = [r["node"] for r in rows if isinstance(r.get("node"), str)]
        if nodes != self.nodes:
            self.nodes = nodes
            for topic, config in self.layout.configs(nodes).items():
                self.link.set_state(topic, json.dumps(config))
        for r in rows:
            if not isinstance(r.get("node"), str):
                continue
            state = str(r.get("state"))
            self.link.set_state(self.layout.health_topic(r["node"]), health_of(state))
            self.link.set_state(self.layout.node_status_topic(r["node"]),
                                ONLINE if state == "running" else OFFLINE)


def poll_health(node: Node, bridge: Bridge) -> None:
    if not node.config.runtime_dir:
        return
    try:
        reply = call(f"ipc://{node.config.runtime_dir}/{CONTROL_NAME}", "ps", timeout_s=1.0)
    except ControlError as exc:
        bridge.warn("node health unavailable: %s", exc)
        return
    rows = reply.get("nodes")
    if isinstance(rows, list):
        bridge.on_health([r for r in rows if isinstance(r, dict)])


def main(node: Node) -> None:
    p = node.params
    if not p["host"]:
        # Off: return, which closes its inputs (a camera's frames would otherwise be received
        # and dropped 30 times a second). Alone, its process exits 0 and is not restarted; in
        # a process group it is reported done and its companions run on (iotrt.launch).
        node.log.info("no MQTT broker configured (param host): the Home Assistant bridge is off")
        return
    try:
        layout = layout_from(node)
        code = read_secret(p, "code_env", "code_file", node.log)
        layout = dataclasses.replace(layout, has_code=bool(code))
        cfg = broker_config(p, layout.device_id, node.log)
        gate = CommandGate(layout, code, p["max_payload"])
        if layout.locks and not code:
            node.log.warning("no unlock code (code_env/code_file): the rules refuse every "
                             "unlock from Home Assistant")
        bridge = Bridge(node, layout, None, gate)
        bridge.link = MqttLink(cfg, will_topic=layout.status_topic, online=ONLINE,
                               offline=OFFLINE, max_events=p["max_events"],
                               subscriptions=(*gate.topics, f"{layout.prefix}/status"),
                               on_message=bridge.on_command, log=node.log)
    except (DriverError, ValueError) as exc:
        node.log.error("cannot start: %s", exc)
        raise SystemExit(1) from None
    try:
        bridge.start()          # discovery configs first, so the first connect publishes them
        bridge.link.start()
        if p["health_s"] > 0:
            node.timer("health", p["health_s"], first_s=0.0)
        intervals = [b.every_s for b, _ in layout.bridged.values()]
        if layout.faces is not None:
            intervals.append(p["faces_every_s"])
        if intervals:
            node.timer("flush", min(intervals))
        node.ready()
        dropped = 0
        for event in node:
            if event.kind == "input":
                bridge.on_input(event.input, event.data)
            elif event.timer == "health":
                poll_health(node, bridge)
            elif event.timer == "flush":
                bridge.flush(time.monotonic())
            elif event.kind == "post":
                bridge.on_post(event.name, event.data)
            if bridge.link.dropped_events != dropped:
                dropped = bridge.link.dropped_events
                bridge.publish_stats()
    finally:
        bridge.link.close()
