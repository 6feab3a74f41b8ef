"""MQTT publish actuator (paho-mqtt 2.x, the optional ``mqtt`` extra).

Each command is published as JSON (or its ``payload`` field alone: a string as is, anything else
as JSON) to ``topic``, whose ``{name}`` placeholders are filled from the command. The ack says
``ok: true`` only once the broker confirmed the message (PUBACK for QoS 1, PUBCOMP for QoS 2;
written to the socket for QoS 0). The connection is kept open and re-established by paho's own
network thread; while it is down, commands are acked ``ok: false`` (with QoS >= 1 paho still
delivers them when it reconnects, which the error says).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.action.actuator import CommandRefused, DriverError, fill, secret, serve

SPEC = NodeSpec(
    doc="publish each command to an MQTT broker (paho-mqtt 2.x)",
    commands_in={"commands": "any map: the JSON payload (or its 'payload' field)"},
    params=[
        Param("host", str, "127.0.0.1", "broker host"),
        Param("port", int, 1883, "broker port (8883 is usual with tls)", min=1, max=65535),
        Param("topic", str, doc="topic to publish to; {field} placeholders come from the command"),
        Param("qos", int, 1, "MQTT quality of service", choices=(0, 1, 2)),
        Param("retain", bool, False, "ask the broker to keep the last message for new readers"),
        Param("client_id", str, "", "MQTT client id (default: iotrt-<node id>)"),
        Param("username", str, "", "user name, if the broker wants one"),
        Param("password_env", str, "", "environment variable holding the password"),
        Param("tls", bool, False, "connect with TLS, verifying the broker against the system CAs"),
        Param("timeout_s", float, 2.0, "wait this long for the broker's confirmation", min=0.01),
        Param("connect_timeout_s", float, 5.0, "at start, wait this long for the first "
                                               "connection (then keep trying in the background)",
              min=0),
        Param("keepalive_s", int, 30, "MQTT keepalive", min=5),
    ],
)


class MqttPublish:
    def __init__(self, host: str, port: int, topic: str, *, qos: int = 1, retain: bool = False,
                 client_id: str = "", username: str = "", password: str = "", tls: bool = False,
                 timeout_s: float = 2.0, keepalive_s: int = 30, log=None) -> None:
        try:
            from paho.mqtt import client as mqtt
        except ModuleNotFoundError as exc:
            raise DriverError("the mqtt actuator needs paho-mqtt 2.x "
                              "(pip install 'iotrt[mqtt]')") from exc
        if not hasattr(mqtt, "CallbackAPIVersion"):
            raise DriverError("the mqtt actuator needs paho-mqtt 2.x (pip install "
                              "'paho-mqtt>=2'); the installed one is 1.x")
        if "+" in topic or "#" in topic:
            raise ValueError(f"topic {topic!r}: wildcards + and # are for subscribing, "
                             f"not publishing")
        self._mqtt = mqtt
        self.where = f"{host}:{port}"
        self.topic, self.qos, self.retain, self.timeout_s = topic, qos, retain, timeout_s
        self.connected = threading.Event()
        self._closing = False
        self._log = log
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if username:
            self._client.username_pw_set(username, password or None)
        if tls:
            self._client.tls_set()
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.connect_async(host, port, keepalive=keepalive_s)
        self._client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            if self._log:
                self._log.error("MQTT broker %s refused the connection: %s", self.where,
                                reason_code)
            return
        self.connected.set()
        if self._log:
            self._log.info("connected to MQTT broker %s", self.where)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if self._log and not self._closing:
            self._log.warning("lost MQTT broker %s (%s); reconnecting", self.where, reason_code)

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        topic = fill(self.topic, command, "topic")
        if "+" in topic or "#" in topic:
            raise CommandRefused(f"topic {topic!r}: a field filled in a wildcard (+ or #)")
        payload = command.get("payload", command)
        if not isinstance(payload, (str, bytes)):
            try:
                payload = json.dumps(payload, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise CommandRefused(f"the command cannot be sent as JSON: {exc}") from exc
        info = self._client.publish(topic, payload, qos=self.qos, retain=self.retain)
        if info.rc == self._mqtt.MQTT_ERR_NO_CONN:
            queued = " (queued: paho sends it when the connection is back)" if self.qos else ""
            raise DriverError(f"not connected to the MQTT broker {self.where}{queued}")
        try:
            info.wait_for_publish(self.timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise DriverError(f"publishing to {topic} on {self.where} failed: {exc}") from exc
        if not info.is_published():
            raise DriverError(f"the MQTT broker {self.where} did not confirm the message on "
                              f"{topic} within {self.timeout_s:g} s")
        return {"topic": topic, "mid": info.mid}

    def close(self) -> None:
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()


def main(node: Node) -> None:
    p = node.params

    def connect() -> MqttPublish:
        client = MqttPublish(p["host"], p["port"], p["topic"], qos=p["qos"], retain=p["retain"],
                             client_id=p["client_id"] or f"iotrt-{node.id}",
                             username=p["username"], password=secret(node, "password_env"),
                             tls=p["tls"], timeout_s=p["timeout_s"],
                             keepalive_s=p["keepalive_s"], log=node.log)
        if not client.connected.wait(p["connect_timeout_s"]):
            node.log.warning("MQTT broker %s not reachable yet; still trying", client.where)
        return client
    serve(node, connect)
