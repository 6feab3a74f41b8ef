"""`iotrt record`: record topics of a running graph to an MCAP file; `iotrt record info FILE`.

    iotrt record -o visit.mcap                          # every topic, until Ctrl-C
    iotrt record -o visit.mcap --topics cam/image,who/faces --duration 20
    iotrt record info visit.mcap

The recorder is a latest-wins subscriber like any other: it never slows the graph; what it
misses is counted (seq gaps) and stored in the file. Ctrl-C or SIGTERM ends it with an
indexed, complete file. Format: docs/record.md.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import sys
import time

from iotrt import wakeup
from iotrt.bus import Subscriber
from iotrt.codec import MAX_QUEUE
from iotrt.control import call
from iotrt.errors import IotrtError
from iotrt.recording import FRAME_ENCODINGS, NotRecordable, Recording, RecordingError, RecordWriter
from iotrt.verbs._graph import control_address


def _bounded(kind, lo, hi):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected a number from {lo} to {hi}, not {text!r}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Guide: docs/record.md. Exit status: 0 ok, 1 no graph/topic or a "
                     "file problem.")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="the MCAP file to write (default: GRAPH-YYYYmmddTHHMMSS.mcap)")
    parser.add_argument("--graph", metavar="GRAPH",
                        help="graph file or name (default: the only running graph)")
    parser.add_argument("--topics", metavar="T1,T2", default="",
                        help="topics to record (default: every topic of the graph but _sup/*)")
    parser.add_argument("--frames", choices=FRAME_ENCODINGS, default="jpeg",
                        help="store RGB frames as JPEG (default) or raw")
    parser.add_argument("--quality", type=_bounded(int, 1, 100), default=80, metavar="Q",
                        help="JPEG quality 1-100 (default 80)")
    parser.add_argument("--duration", type=_bounded(float, 0, 1e9), default=0.0, metavar="S",
                        help="stop after S seconds (default: run until Ctrl-C/SIGTERM)")
    parser.add_argument("--queue", type=_bounded(int, 1, MAX_QUEUE), default=8, metavar="N",
                        help="per-topic receive queue, in messages (default 8)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    info = sub.add_parser("info", help="topics, counts, duration, drops and size of a recording",
                          description="Show what a recording holds.")
    info.add_argument("file", metavar="FILE")
    info.add_argument("--json", action="store_true", help="one JSON object")
    info.add_argument("--partial", action="store_true",
                      help="read a truncated file (a killed recorder's) up to where it ends")


def run(args: argparse.Namespace) -> int:
    if args.action == "info":
        return show_info(args)
    address = control_address(args.graph)
    topics = call(address, "topics")["topics"]
    wanted = [t for t in args.topics.split(",") if t] or sorted(
        t for t in topics if not t.startswith("_sup/"))
    missing = [t for t in wanted if t not in topics]
    if missing:
        raise IotrtError(f"no topic {', '.join(missing)}; topics: {', '.join(sorted(topics))}")
    graph = os.path.basename(address[len("ipc://"):].rsplit("/", 1)[0]) or "graph"
    output = args.output or f"{graph}-{time.strftime('%Y%m%dT%H%M%S')}.mcap"
    try:
        writer = RecordWriter(output, frames=args.frames, quality=args.quality,
                              meta={"graph": graph, "topics": ",".join(wanted)})
    except (RecordingError, ValueError) as exc:
        print(f"iotrt record: {exc}", file=sys.stderr)
        return 1
    subs = {t: Subscriber(topics[t]["address"], queue=args.queue, name=f"record {t}")
            for t in wanted}
    print(f"recording {len(wanted)} topic(s) to {output} (Ctrl-C to stop)", file=sys.stderr)
    try:
        record_loop(writer, subs, args.duration)
    finally:
        for topic, sub in subs.items():
            writer.drops[topic] = sub.drops
            sub.close()
        writer.close()
    drops = sum(writer.drops.values())
    print(f"wrote {output}: {writer.messages} message(s), {writer.bytes / 1e6:.1f} MB, "
          f"{drops} dropped", file=sys.stderr)
    return 0


def record_loop(writer: RecordWriter, subs: dict[str, Subscriber], duration_s: float) -> None:
    """Write what arrives until SIGINT/SIGTERM or `duration_s` (0: no limit)."""
    stop = []
    wake_r, wake_w = wakeup.pipe()
    old_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    old = {s: signal.signal(s, lambda *_: stop.append(True)) for s in (signal.SIGINT,
                                                                        signal.SIGTERM)}
    sel = selectors.DefaultSelector()
    for sub in subs.values():
        sel.register(sub.fileno(), selectors.EVENT_READ, sub)
    sel.register(wake_r, selectors.EVENT_READ, None)
    end = time.monotonic() + duration_s if duration_s > 0 else None
    bad = 0
    try:
        while not stop:
            timeout = None if end is None else end - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            # wake at least every second: the writer's flush deadline needs a visit
            for key, _ in sel.select(1.0 if timeout is None else min(timeout, 1.0)):
                if key.data is None:
                    wakeup.drain(wake_r)
                    continue
                while (env := key.data.recv_nowait()) is not None:
                    try:
                        writer.write(env)
                    except NotRecordable as exc:   # data the codec refuses: count and skip
                        bad += 1
                        if bad == 1:
                            print(f"iotrt record: skipped a message on {env.topic}: {exc}",
                                  file=sys.stderr)
            writer.flush_if_due()
    finally:
        sel.close()
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_fd)
        os.close(wake_r)
        os.close(wake_w)


def show_info(args: argparse.Namespace) -> int:
    try:
        info = Recording(args.file, partial=args.partial).info()
    except RecordingError as exc:
        print(f"iotrt record: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({
            "file": str(info.path), "bytes": info.size, "complete": info.complete,
            "messages": info.messages, "duration_s": round(info.duration_s, 3),
            "drops": info.drops, "graph": info.meta.get("graph", ""),
            "topics": {t.topic: {"count": t.count, "drops": t.drops, "encoding": t.encoding}
                       for t in info.topics.values()}}))
        return 0
    print(f"file:      {info.path} ({info.size / 1e6:.1f} MB)"
          + ("" if info.complete else f"  TRUNCATED: {info.error}"))
    print(f"graph:     {info.meta.get('graph', '?')}   recorded by iotrt "
          f"{info.meta.get('iotrt', '?')}, frames {info.meta.get('frames', '?')}")
    print(f"duration:  {info.duration_s:.1f} s   messages: {info.messages}   "
          f"drops: {info.drops}")
    for t in sorted(info.topics.values(), key=lambda t: t.topic):
        rate = t.count / info.duration_s if info.duration_s > 0 else 0.0
        print(f"  {t.topic:28} {t.count:8d} msgs  {rate:6.1f}/s  {t.encoding:7}  "
              f"{t.drops} dropped")
    return 0
