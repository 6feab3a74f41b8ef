"""`iotrt mqtt forget GRAPH`: remove a graph's device from Home Assistant.

Home Assistant keeps a discovered device as long as its retained discovery configs stay on the
broker. This connects with the graph's own `homeassistant` node params (host, TLS, credentials),
finds every retained config and state topic of that device, and clears each one (an empty
retained message), which makes Home Assistant delete the entities.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import uuid

from iotrt.control import ControlError, call
from iotrt.errors import ConfigError, IotrtError, SupervisionError
from iotrt.graph import load_graph
from iotrt.nodes.action.actuator import DriverError
from iotrt.nodes.action.hadiscovery import Layout
from iotrt.nodes.action.homeassistant import broker_config, device_id
from iotrt.nodes.action.mqttlink import connect_properties, make_client

KIND = "homeassistant"


class ForgetError(IotrtError, RuntimeError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    forget = sub.add_parser("forget", help="clear the graph's retained Home Assistant "
                                           "discovery configs and states from the broker")
    forget.add_argument("graph", metavar="GRAPH", help="graph file")
    forget.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="give up on the broker after this long (default 10)")


def forget(params: dict, graph: str, timeout_s: float) -> tuple[str, int]:
    """Clear one bridge node's retained topics; returns (device id, topics cleared)."""
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
    return dev, len(retained)


def run(args: argparse.Namespace) -> int:
    graph = load_graph(args.graph, check_node_files=False)
    bridges = [n for n in graph.nodes.values() if n.kind == KIND]
    if not bridges:
        raise ConfigError(f"{args.graph} has no '{KIND}' node")
    try:
        call(graph.control_address, "ps", timeout_s=1.0)
        raise SupervisionError(f"graph '{graph.name}' is running and its bridge would publish the "
                               f"configs again: stop it first (iotrt down {args.graph})")
    except ControlError:
        pass    # not running: good
    status = 0
    for n in bridges:
        try:
            dev, count = forget(n.params, graph.name, args.timeout)
        except ForgetError as exc:
            print(f"iotrt mqtt: node '{n.id}': {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"node '{n.id}': cleared {count} retained topic(s) of device {dev}")
    return status
