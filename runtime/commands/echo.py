"""`iotrt echo TOPIC`: print the messages on a topic of a running graph (arrays summarised)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from iotrt.bus import Subscriber
from iotrt.control import ControlError, control_address, call


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", help="node/output, e.g. cam/image (see 'iotrt topics')")
    parser.add_argument("--graph", metavar="GRAPH",
                        help="graph file or name (default: the only running graph)")
    parser.add_argument("-n", "--count", type=int, default=0, metavar="N",
                        help="exit after N messages (default: run until Ctrl-C)")
    parser.add_argument("--timeout", type=float, default=0.0, metavar="S",
                        help="exit with status 1 if no message arrives for S seconds")
    parser.add_argument("--file", metavar="FILE.mcap",
                        help="print the topic's messages from a recording (iotrt record) "
                             "instead of a running graph")


def summarise(value: Any) -> Any:
    """A JSON-able view of a message: arrays become 'ndarray uint8 (480, 640, 3)'."""
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype} {tuple(value.shape)}"
    if isinstance(value, dict):
        return {str(k): summarise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [summarise(v) for v in value]
    if isinstance(value, bytes):
        return f"bytes[{len(value)}]"
    return value


def resolve_topic(graph: str | None, topic: str) -> str:
    topics = call(control_address(graph), "topics")["topics"]
    if topic not in topics:
        raise ControlError(f"no topic '{topic}'; topics: {', '.join(sorted(topics))}")
    return topics[topic]["address"]


def run(args: argparse.Namespace) -> int:
    if args.file:
        return echo_file(args)
    try:
        address = resolve_topic(args.graph, args.topic)
    except ControlError as exc:
        print(f"iotrt echo: {exc}", file=sys.stderr)
        return 1
    seen = 0
    with Subscriber(address, queue=16, name=f"echo {args.topic}") as sub:
        while not args.count or seen < args.count:
            env = sub.recv(timeout_s=args.timeout or None)
            if env is None:
                print(f"iotrt echo: no message on {args.topic} for {args.timeout:g}s", file=sys.stderr)
                return 1
            seen += 1
            age_ms = (time.monotonic_ns() - env.stamp_ns) / 1e6
            head = f"--- {env.topic} seq={env.seq} src={env.src} age={age_ms:.1f}ms"
            print(head, json.dumps(summarise(env.data), default=repr), sep="\n", flush=True)
    return 0


def echo_file(args: argparse.Namespace) -> int:
    """The messages of one topic of a recording; `t` is seconds since its first message."""
    from iotrt.recording import Recording, RecordingError

    rec = Recording(args.file)
    try:
        info = rec.info()
        if args.topic not in info.topics:
            print(f"iotrt echo: no topic '{args.topic}' in {args.file}; topics: "
                  f"{', '.join(sorted(info.topics))}", file=sys.stderr)
            return 1
        seen = 0
        for m in rec.messages({args.topic}):
            if args.count and seen >= args.count:
                break
            seen += 1
            head = (f"--- {m.topic} seq={m.seq} src={m.src} "
                    f"t={(m.log_time_ns - info.start_ns) / 1e9:.3f}s")
            print(head, json.dumps(summarise(m.data), default=repr), sep="\n", flush=True)
    except RecordingError as exc:
        print(f"iotrt echo: {exc}", file=sys.stderr)
        return 1
    return 0
