"""`Node.for_test`: run node logic in-process, without sockets or a supervisor.

    from iotrt.node import Node
    from iotrt.nodes.perception import detector

    node = Node.for_test(detector, params={"threshold": 0.6})
    node.feed("image", frame)               # queue an input message
    node.run()                              # detector.main(node) until the queue is empty
    out, = node.published                   # what it published, as subscribers would see it

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
from typing import Any, Callable, Iterator

from iotrt.codec import Envelope, decode, encode, pack, unpack
from iotrt.command import Command, CommandTimeout
from iotrt.node import Event, Node, NodeError
from iotrt.protocol import NodeConfig
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
    def __init__(self, acks: list[dict]):
        self.acks = acks

    def _answer(self, cid: str, ack: dict) -> None:
        self.acks.append(unpack(pack(ack)))


def _resolve(target: Any) -> tuple[NodeSpec, Callable | None]:
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


class TestNode(Node):
    """A Node whose inputs are fed by the test and whose outputs are captured."""

    __test__ = False  # not a pytest test class

    def __init__(self, target: Any, params: dict | None = None, id: str = "test"):
        spec, self._main = _resolve(target)
        self.published: list[Published] = []
        self.commands: list[SentCommand] = []
        self.acks: list[dict] = []
        self.records: list[tuple[str, dict]] = []
        self.deadlines: list[float | None] = []   # node.safety_deadline() calls, in order
        self.responder: Callable[[str, Any], dict | None] = lambda output, data: {}
        self._queue: deque[Event] = deque()
        self._seq: dict[str, int] = {}
        super().__init__(NodeConfig(id=id, params=params or {}), spec=spec)

    def _setup(self) -> None:
        self._subs, self._pubs = {}, {}

    def _check(self, group: str, name: str) -> None:
        if not self.spec.has_port(group, name):
            declared = ", ".join(getattr(self.spec, group)) or "none"
            raise NodeError(f"node {self.id!r} has no {group[:-1].replace('_', ' ')} "
                            f"{name!r} (declared: {declared})")

    # -- feeding -----------------------------------------------------------------------------

    def feed(self, input: str, data: Any, *, stamp_ns: int | None = None,
             trace: list | None = None, src: str = "upstream") -> TestNode:
        """Queue a message on `input` (encoded and decoded like a real one)."""
        self._check("inputs", input)
        seq = self._seq.get(input, 0)
        self._seq[input] = seq + 1
        env = decode(encode(Envelope(
            f"{src}/{input}", seq, time.monotonic_ns() if stamp_ns is None else stamp_ns,
            src, [[src, time.monotonic_ns()]] if trace is None else trace, data)))
        self._queue.append(Event("input", input, env.data, env))
        return self

    def tick(self, timer: str) -> TestNode:
        """Queue a tick of timer `timer`."""
        self._queue.append(Event("timer", timer))
        return self

    def feed_command(self, name: str, data: Any, *, id: str | None = None) -> TestNode:
        """Queue a command on command input `name`; the node's ack lands in `self.acks`."""
        self._check("commands_in", name)
        cmd = Command(id or uuid.uuid4().hex, "test", unpack(pack(data)), time.monotonic_ns(),
                      _AckSink(self.acks))
        self._queue.append(Event("command", name, cmd.data, command=cmd))
        return self

    def post(self, name: str, data: Any = None) -> None:
        """As Node.post: the event is queued (handled if `run` is still going)."""
        self._queue.append(Event("post", name, data))

    def _wake(self) -> None:
        pass   # no loop to wake: events are queued

    def feed_reload(self) -> TestNode:
        self._queue.append(Event("reload"))
        return self

    def run(self) -> TestNode:
        """Run the node's main(node) until every queued event is handled."""
        if self._main is None:
            raise NodeError("this target has no main(node) to run; iterate the node instead")
        self._main(self)
        return self

    # -- captured transport ------------------------------------------------------------------

    def _events(self) -> Iterator[Event]:
        try:
            while self._queue and not self._stop.is_set():
                self._before_next()
                yield self._deliver(self._queue.popleft())
        finally:
            self._before_next()

    def _emit(self, output: str, data: Any, stamp_ns: int, trace: list) -> None:
        seq = self._out_msgs.get(output, 0)
        env = decode(encode(Envelope(f"{self.id}/{output}", seq, stamp_ns, self.id, trace, data)))
        self.published.append(Published(output, env.data, env))

    def _call(self, output: str, data: Any, timeout_s: float, retries: int) -> dict:
        self._check("commands_out", output)
        fields = self.responder(output, unpack(pack(data)))
        ack = None if fields is None else {"id": uuid.uuid4().hex, "ok": True, **fields}
        self.commands.append(SentCommand(output, data, ack))
        if ack is None:
            raise CommandTimeout(f"no ack for command on {output!r} (test responder)")
        return ack

    def _deadline(self, in_s: float | None) -> bool:
        self.deadlines.append(in_s)
        return True

    def _record(self, body: dict, sync: bool) -> None:
        body = unpack(pack(body))
        self.records.append((body["kind"], body["fields"]))

    def stop(self) -> None:
        self._stop.set()

    def ready(self) -> None:
        pass

    def close(self) -> None:
        pass
