"""`iotrt echo TOPIC`: print the messages on a topic of a running graph (arrays summarised)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from iotrt.bus import Subscriber
from iotrt.control import ControlError, call
from iotrt.errors import IotrtError
from iotrt.verbs._graph import add_graph_argument, control_address, selected_graph


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", help="node/output, e.g. cam/image (see 'iotrt topics')")
    add_graph_argument(parser)
    parser.add_argument("-n", "--count", type=int, default=0, metavar="N",
                        help="exit after N messages (default: run until Ctrl-C)")
    parser.add_argument("--timeout", type=float, default=0.0, metavar="S",
                        help="exit with status 1 if no message arrives for S seconds")
    parser.add_argument("--changes", action="store_true",
                        help="print a message only when its data differs from the last printed "
                             "(arrays compare by dtype and shape)")
    parser.add_argument("--skip-empty", action="store_true",
                        help="skip messages whose data is empty: {}, [], \"\", None, or a map "
                             "whose values are all empty (e.g. {\"faces\": []})")
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


def is_empty(data: Any) -> bool:
    """True for data with nothing in it, what `--skip-empty` skips: None, "", b"", an empty
    list or map, or a list or map whose items are all empty ({"faces": [], "count": 0} is not
    empty: 0 is a value). An array is empty when it has no elements."""
    if data is None or (isinstance(data, (str, bytes)) and not data):
        return True
    if isinstance(data, np.ndarray):
        return data.size == 0
    if isinstance(data, dict):
        return all(is_empty(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return all(is_empty(v) for v in data)
    return False


class Filter:
    """The --changes and --skip-empty choices: `printable(data)` -> the JSON text to print, or
    None to skip the message. Changes compare the printed (summarised) form, so a frame whose
    pixels changed but not its shape counts as unchanged."""

    def __init__(self, changes: bool, skip_empty: bool):
        self.changes, self.skip_empty = changes, skip_empty
        self.last: str | None = None

    def printable(self, data: Any) -> str | None:
        if self.skip_empty and is_empty(data):
            return None
        text = json.dumps(summarise(data), default=repr)
        if self.changes and text == self.last:
            return None
        self.last = text
        return text


def resolve_topic(graph: str | None, topic: str) -> str:
    topics = call(control_address(graph), "topics")["topics"]
    if topic not in topics:
        raise ControlError(f"no topic '{topic}'; topics: {', '.join(sorted(topics))}")
    return topics[topic]["address"]


def run(args: argparse.Namespace) -> int:
    if args.file:
        return echo_file(args)
    address = resolve_topic(selected_graph(args), args.topic)
    seen = 0
    keep = Filter(args.changes, args.skip_empty)
    with Subscriber(address, queue=16, name=f"echo {args.topic}") as sub:
        while not args.count or seen < args.count:
            env = sub.recv(timeout_s=args.timeout or None)
            if env is None:
                raise IotrtError(f"no message on {args.topic} for {args.timeout:g}s")
            text = keep.printable(env.data)
            if text is None:
                continue
            seen += 1
            age_ms = (time.monotonic_ns() - env.stamp_ns) / 1e6
            head = f"--- {env.topic} seq={env.seq} src={env.src} age={age_ms:.1f}ms"
            print(head, text, sep="\n", flush=True)
    return 0


def echo_file(args: argparse.Namespace) -> int:
    """The messages of one topic of a recording; `t` is seconds since its first message."""
    from iotrt.recording import Recording, RecordingError

    rec = Recording(args.file)
    try:
        info = rec.info()
        if args.topic not in info.topics:
            raise IotrtError(f"no topic '{args.topic}' in {args.file}; topics: "
                             f"{', '.join(sorted(info.topics))}")
        seen = 0
        keep = Filter(args.changes, args.skip_empty)
        for m in rec.messages({args.topic}):
            if args.count and seen >= args.count:
                break
            text = keep.printable(m.data)
            if text is None:
                continue
            seen += 1
            head = (f"--- {m.topic} seq={m.seq} src={m.src} "
                    f"t={(m.log_time_ns - info.start_ns) / 1e9:.3f}s")
            print(head, text, sep="\n", flush=True)
    except RecordingError as exc:
        print(f"iotrt echo: {exc}", file=sys.stderr)
        return 1
    return 0
