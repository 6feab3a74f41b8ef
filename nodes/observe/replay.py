"""Replay source: publishes recorded messages on their topics' addresses, in place of the
nodes that published them live. `iotrt replay FILE --graph GRAPH` adds it to the graph it runs
(docs/record.md); a graph file does not name it.

Messages go out in file order with their recorded stamp_ns, src and trace (plus a hop for this
node), paced by their recorded receive times: `rate` 1 is real time, 2 twice as fast, 0 as
fast as possible. Before the first message it waits (up to `wait_s`) until every subscriber
the graph wires to each topic is connected, so nothing is published into the void. When the
last message is out it journals `replay_done` and idles until the graph stops.
"""

from __future__ import annotations

import time

from iotrt.bus import Publisher
from iotrt.node import Node, NodeSpec, Param
from iotrt.recording import Recording, RecordingError

SPEC = NodeSpec(
    doc="publish a recording's messages on their topics (used by iotrt replay)",
    params=[
        Param("file", str, doc="the MCAP recording"),
        Param("topics", dict, doc="topic -> {address, subscribers, queue}"),
        Param("rate", float, 1.0, "1: real time, N: N times faster, 0: as fast as possible",
              min=0.0),
        Param("start_s", float, 0.0, "skip this many seconds from the recording's start",
              min=0.0),
        Param("end_s", float, 0.0, "stop this many seconds after the recording's start "
                                   "(0: at its end)", min=0.0),
        Param("partial", bool, False, "play a truncated file up to where it ends"),
        Param("wait_s", float, 30.0, "wait this long for subscribers before playing",
              min=0.0),
        Param("batch", int, 256, "at rate 0: messages per turn of the event loop", min=1),
    ],
)

TICK_S = 0.002


class Player:
    """Walks the recording; `due(now)` publishes everything due by `now`, False at the end."""

    def __init__(self, node: Node) -> None:
        p = self.p = node.params
        self.node = node
        self.pubs: dict[str, Publisher] = {}
        for topic, ep in p["topics"].items():
            self.pubs[topic] = Publisher(ep["address"], topic, topic.split("/", 1)[0],
                                         queue=ep.get("queue"))
        rec = Recording(p["file"], partial=p["partial"])
        info = rec.info()
        self.first = info.start_ns or 0
        self.lo = self.first + int(p["start_s"] * 1e9)
        self.hi = self.first + int(p["end_s"] * 1e9) if p["end_s"] else None
        self.messages = rec.messages(set(self.pubs))
        self.rate = p["rate"]
        self.t0 = 0.0
        self.sent = 0
        self.pending = None

    def connected(self) -> bool:
        want = self.p["topics"]
        return all(pub.subscribers >= want[t].get("subscribers", 0)
                   for t, pub in self.pubs.items())

    def due(self, now: float) -> bool:
        budget = self.p["batch"] if self.rate == 0 else 1 << 30
        while budget:
            m = self.pending or next(self.messages, None)
            self.pending = None
            if m is None:
                return False
            if m.log_time_ns < self.lo:
                continue
            if self.hi is not None and m.log_time_ns > self.hi:
                return False
            if self.rate and self.t0 + (m.log_time_ns - self.lo) / 1e9 / self.rate > now:
                self.pending = m
                return True
            trace = list(m.trace) + [[self.node.id, time.monotonic_ns()]]
            pub = self.pubs[m.topic]
            pub.src = m.src            # the recorded publisher's id, as live
            pub.publish(m.data, stamp_ns=m.stamp_ns, trace=trace)
            self.sent += 1
            budget -= 1
        return True

    def close(self) -> None:
        for pub in self.pubs.values():
            pub.close()


def main(node: Node) -> None:
    try:
        player = Player(node)
    except RecordingError as exc:
        raise SystemExit(f"node {node.id!r}: {exc}") from None
    node.ready()
    deadline = time.monotonic() + node.params["wait_s"]
    node.timer("play", TICK_S)
    playing = done = False
    try:
        for event in node:
            if event.timer != "play" or done:
                continue
            now = time.monotonic()
            if not playing:
                if not player.connected() and now < deadline:
                    continue
                if not player.connected():
                    node.log.warning("not every subscriber connected after %.0f s; playing "
                                     "anyway", node.params["wait_s"])
                playing, player.t0 = True, now
                node.log.info("playing %s", node.params["file"])
            try:
                more = player.due(now)
            except RecordingError as exc:
                raise SystemExit(f"node {node.id!r}: {exc}") from None
            if not more:
                done = True
                elapsed = time.monotonic() - player.t0
                node.log.info("replay done: %d message(s) in %.2f s", player.sent, elapsed)
                node.record("replay_done", sync=True, messages=player.sent,
                            seconds=round(elapsed, 4), file=node.params["file"])
    finally:
        player.close()
