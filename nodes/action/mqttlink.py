"""A long-lived MQTT connection that loses nothing that matters while the broker is away.

- *States* (retained topics: discovery configs, lock state, sensors, availability) are kept as
  the latest payload per topic. While connected a change is published at once; on every
  (re)connect all of them are published again, so Home Assistant never sees a stale value and
  a broker that lost its retained store (restarted without persistence) gets them back.
- *Events* (not retained: the doorbell) are published at once while connected, else queued up
  to ``max_events``; the oldest are dropped beyond that and counted (``dropped_events``).
- The birth message ("online") is the last state published on connect; the last will
  ("offline", retained) is set on the connection so the broker announces a dead device.
- MQTT 5, with a maximum packet size: the broker drops an oversized message instead of
  sending it to us.
- Credentials come from the caller (an env var or a file, never the graph file); TLS verifies
  the broker's certificate against ``ca_file`` (or the system CAs) and its host name; a client
  certificate is optional.

paho-mqtt 2.x runs the socket on its own thread; ``on_message`` is called there.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

from iotrt.nodes.action.actuator import DriverError


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int = 1883
    client_id: str = ""
    username: str = ""
    password: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: int = 30
    max_packet: int = 65536     # larger messages are dropped by the broker, never sent to us

    @property
    def where(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def import_paho():
    try:
        from paho.mqtt import client as mqtt
    except ModuleNotFoundError as exc:
        raise DriverError("the Home Assistant bridge needs paho-mqtt 2.x "
                          "(pip install 'iotrt[mqtt]')") from exc
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise DriverError("the Home Assistant bridge needs paho-mqtt 2.x "
                          "(pip install 'paho-mqtt>=2'); the installed one is 1.x")
    return mqtt


def make_client(cfg: BrokerConfig):
    """A configured, not yet connected paho client (MQTT 5, credentials, TLS)."""
    mqtt = import_paho()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                         protocol=mqtt.MQTTv5)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password or None)
    if cfg.tls:
        try:
            client.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None,
                           keyfile=cfg.key_file or None, cert_reqs=ssl.CERT_REQUIRED,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise DriverError(f"TLS setup for {cfg.where} failed: {exc} (check ca_file, "
                              f"cert_file, key_file)") from exc
    return client


def connect_properties(cfg: BrokerConfig):
    """MQTT 5 CONNECT properties: the broker must not send us a packet above ``max_packet``
    (paho would read a 256 MB message into memory before any check of ours could run)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = cfg.max_packet
    return props


class MqttLink:
    def __init__(self, cfg: BrokerConfig, *, will_topic: str, online: str = "online",
                 offline: str = "offline", subscriptions: tuple[str, ...] = (),
                 on_message: Callable[[str, bytes], None] | None = None, max_events: int = 100,
                 log: logging.Logger | None = None) -> None:
        self.cfg = cfg
        self.log = log or logging.getLogger("iotrt.mqtt")
        self.connected = threading.Event()
        self.dropped_events = 0
        self._will = (will_topic, online, offline)
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._mutex = threading.Lock()
        self._states: dict[str, bytes] = {}       # topic -> latest payload (retained)
        self._events: deque[tuple[str, bytes]] = deque(maxlen=max_events)
        self._closing = False
        self._client = make_client(cfg)
        self._client.will_set(will_topic, offline, qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._connected
        self._client.on_disconnect = self._disconnected
        self._client.on_message = self._message
        # A bug in a callback must not end paho's thread (and with it every reconnect): paho
        # logs the exception through our logger and carries on.
        self._client.suppress_exceptions = True
        self._client.enable_logger(self.log)

    def start(self) -> None:
        """Connect in the background (paho's thread), and keep reconnecting."""
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s,
                                   properties=connect_properties(self.cfg))
        self._client.loop_start()

    # -- what the node calls ---------------------------------------------------------------

    def set_state(self, topic: str, payload: str | bytes) -> None:
        """The latest value of a retained topic; published now if connected and changed."""
        data = payload.encode() if isinstance(payload, str) else payload
        with self._mutex:
            if self._states.get(topic) == data:
                return
            self._states[topic] = data
            if self.connected.is_set():
                self._client.publish(topic, data, qos=1, retain=True)

    def send_event(self, topic: str, payload: str | bytes) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        with self._mutex:
            if self.connected.is_set():
                self._client.publish(topic, data, qos=1, retain=False)
                return
            if len(self._events) == self._events.maxlen:
                self.dropped_events += 1
            self._events.append((topic, data))

    def close(self) -> None:
        """Say "offline" (a clean stop fires no last will) and disconnect."""
        self._closing = True
        if self.connected.is_set():
            info = self._client.publish(self._will[0], self._will[2], qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass  # the connection went away meanwhile: the broker sends the last will
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho's thread ---------------------------------------------------------------------

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.log.error("MQTT broker %s refused the connection: %s", self.cfg.where,
                           reason_code)
            return
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        with self._mutex:
            self.connected.set()
            status = self._will[0]
            for topic, data in self._states.items():
                if topic != status:
                    client.publish(topic, data, qos=1, retain=True)
            queued, self._events = list(self._events), deque(maxlen=self._events.maxlen)
            for topic, data in queued:
                client.publish(topic, data, qos=1, retain=False)
            self._states[status] = self._will[1].encode()
            client.publish(status, self._will[1], qos=1, retain=True)   # birth, last
        self.log.info("connected to MQTT broker %s (%d states, %d queued events sent)",
                      self.cfg.where, len(self._states), len(queued))

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        with self._mutex:
            was = self.connected.is_set()
            self.connected.clear()
        if was and not self._closing:
            self.log.warning("lost MQTT broker %s (%s); reconnecting, states and up to %d "
                             "events are kept until then", self.cfg.where, reason_code,
                             self._events.maxlen)

    def _message(self, client, userdata, msg) -> None:
        if self._on_message is not None:
            self._on_message(msg.topic, msg.payload)

    def republish(self) -> None:
        """Publish every state again (Home Assistant restarted and asks for them)."""
        with self._mutex:
            if not self.connected.is_set():
                return
            for topic, data in self._states.items():
                self._client.publish(topic, data, qos=1, retain=True)
