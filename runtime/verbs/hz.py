"""`iotrt hz TOPIC`: measure the message rate of a topic of a running graph."""

from __future__ import annotations

import argparse
import statistics
import time
from collections import deque

from iotrt.bus import Subscriber
from iotrt.verbs._graph import add_graph_argument, selected_graph
from iotrt.verbs.echo import resolve_topic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", help="node/output, e.g. cam/image (see 'iotrt topics')")
    add_graph_argument(parser)
    parser.add_argument("--window", type=int, default=100, metavar="N",
                        help="compute over the last N messages (default 100)")
    parser.add_argument("--duration", type=float, default=0.0, metavar="S",
                        help="stop after S seconds (default: run until Ctrl-C)")


def rate_line(times: deque, drops: int) -> str:
    gaps = [b - a for a, b in zip(times, list(times)[1:])]
    mean = statistics.fmean(gaps)
    std = statistics.pstdev(gaps) * 1e3
    return (f"rate {1 / mean:.2f} Hz  period min {min(gaps) * 1e3:.1f} max {max(gaps) * 1e3:.1f} "
            f"std {std:.1f} ms  window {len(times)}  drops {drops}")


def run(args: argparse.Namespace) -> int:
    address = resolve_topic(selected_graph(args), args.topic)
    times: deque = deque(maxlen=max(2, args.window))
    start = time.monotonic()
    next_print = start + 1.0
    with Subscriber(address, queue=64, name=f"hz {args.topic}") as sub:
        while not args.duration or time.monotonic() - start < args.duration:
            env = sub.recv(timeout_s=0.2)
            now = time.monotonic()
            if env is not None:
                times.append(now)
            if now >= next_print:
                next_print = now + 1.0
                print(rate_line(times, sub.drops) if len(times) > 1
                      else f"no messages on {args.topic} yet", flush=True)
    return 0 if len(times) > 1 else 1
