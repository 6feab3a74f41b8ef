"""`Node.for_test`: run node logic in-process, without sockets or a supervisor.

    from iotrt.node import Node
    from iotrt.nodes.perception import detector

    node = Node.for_test(detector, params={"threshold": 0.6})
    node.feed("image", frame)               # queue an input message
    node.run()                              # detector.main(node) until the queue is empty
    out, = node.published                   # what it published, as subscribers would see it

The node under test is a plain `Node` on a `FakeTransport` (this module): the same event loop,
timers, parameter checks and command bookkeeping as in a graph, with the transport replaced.
The fake delivers what the test queued, in order, and then ends the loop. Its clock stands
at 0: a node's timers fire when the test ticks them (and a timer whose first tick is due at
once, `first_s=0`, once at the start); alarms, set in real monotonic time, never come due.

Everything a node sends goes through the real codec (published data is encoded and decoded),
so a test catches data the wire would refuse. Commands the node sends are answered by
`node.responder(output, data) -> ack fields` (default: ok); return None to simulate a lost ack
(the node then sees CommandTimeout).
"""

from __future__ import annotations

import importlib
import time
import types
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from iotrt.codec import Envelope, decode, encode, pack, unpack
from iotrt.command import Command, CommandTimeout
from iotrt.spec import NodeSpec, load_spec


@dataclass(slots=True)
class Published:
    output: str
    data: Any
    envelope: Envelope


@dataclass(slots=True)
class SentCommand:
    output: str
    data: Any
    ack: dict | None


class _AckSink:
    def __init__(self, transport: FakeTransport):
        self.transport = transport

    def _answer(self, cid: str, ack: dict, payload: bytes) -> None:
        self.transport.acks.append(unpack(payload))  # what a real server sends: Command.reply packed it


def resolve_target(target: Any) -> tuple[NodeSpec, Callable | None]:
    """A NodeSpec, a node module (object or import path) or a script path -> (SPEC, main)."""
    if isinstance(target, NodeSpec):
        return target, None
    if isinstance(target, types.ModuleType):
        return load_spec(target.__name__), target.main
    if isinstance(target, str):
        spec = load_spec(target)
        if target.endswith(".py"):
            return spec, None
        module_name, _, func = target.partition(":")
        return spec, getattr(importlib.import_module(module_name), func or "main")
    raise TypeError(f"for_test takes a NodeSpec, a module or a target string, not {target!r}")


class FakeTransport:
    """A Node's transport (iotrt.node.Transport) for tests: arrivals are queued by the test
    (`feed`, `tick`, `feed_command`, `feed_reload`), and what the node sends is captured
    (`published`, `commands`, `acks`, `records`, `deadlines`)."""

    wakeup_fd = None          # no signals: a test's node must not take over the test process

    def __init__(self, node_id: str):
        self.id = node_id
        self.outputs: dict = {}   # no sockets to publish on: `published` collects instead
        self.published: list[Published] = []
        self.commands: list[SentCommand] = []
        self.acks: list[dict] = []
        self.records: list[tuple[str, dict]] = []
        self.deadlines: list[float | None] = []   # node.safety_deadline() calls, in order
        self.responder: Callable[[str, Any], dict | None] = lambda output, data: {}
        self._queue: deque[tuple[str, str, Any]] = deque()
        self._in_seq: dict[str, int] = {}
        self._out_seq: dict[str, int] = {}

    # -- what the test queues ----------------------------------------------------------------

    def feed(self, input: str, data: Any, *, stamp_ns: int | None = None,
             trace: list | None = None, src: str = "upstream") -> None:
        """Queue a message on `input` (encoded and decoded like a real one)."""
        seq = self._in_seq.get(input, 0)
        self._in_seq[input] = seq + 1
        env = decode(encode(Envelope(
            f"{src}/{input}", seq, time.monotonic_ns() if stamp_ns is None else stamp_ns,
            src, [[src, time.monotonic_ns()]] if trace is None else trace, data)))
        self._queue.append(("input", input, env))

    def tick(self, timer: str) -> None:
        self._queue.append(("timer", timer, None))

    def feed_command(self, name: str, data: Any, *, id: str | None = None) -> None:
        """Queue a command on command input `name`; the node's ack lands in `acks`."""
        self._queue.append(("command", name, Command(
            id or uuid.uuid4().hex, "test", unpack(pack(data)), time.monotonic_ns(),
            _AckSink(self))))

    def feed_reload(self) -> None:
        self._queue.append(("reload", "", None))

    # -- the Transport interface -------------------------------------------------------------

    def clock_ns(self) -> int:
        return 0              # stands at 0: see the module docstring

    def wait(self, timeout_s: float) -> list[tuple[str, str, Any]] | None:
        """The next queued arrival, or None once the queue is empty (the loop ends)."""
        return [self._queue.popleft()] if self._queue else None

    def wake(self) -> None:
        self._queue.append(("wake", "", None))   # node.post: handled in order with the rest

    def publish(self, output: str, data: Any, stamp_ns: int, trace: list) -> None:
        seq = self._out_seq.get(output, 0)
        self._out_seq[output] = seq + 1
        env = decode(encode(Envelope(f"{self.id}/{output}", seq, stamp_ns, self.id, trace, data)))
        self.published.append(Published(output, env.data, env))

    def loan(self, output: str, shape: tuple, dtype: Any) -> None:
        return None           # the node allocates a plain array instead

    def call(self, output: str, data: Any, timeout_s: float, retries: int) -> dict:
        fields = self.responder(output, unpack(pack(data)))
        ack = None if fields is None else {"id": uuid.uuid4().hex, "ok": True, **fields}
        self.commands.append(SentCommand(output, data, ack))
        if ack is None:
            raise CommandTimeout(f"no ack for command on {output!r} (test responder)")
        return ack

    def record(self, body: dict, sync: bool) -> None:
        body = unpack(pack(body))
        self.records.append((body["kind"], body["fields"]))

    def deadline(self, in_s: float | None) -> bool:
        self.deadlines.append(in_s)
        return True

    def ready(self) -> None:
        pass

    def heartbeat(self, stats: dict) -> None:
        pass

    def input_stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass
