"""The Node API that every node, built-in or user-written, uses.

    from iotrt import Node

    node = Node()                      # config, params and addresses from the supervisor
    for event in node:                 # inputs, timer ticks, commands, reloads; ends on stop
        if event.input == "image":
            node.publish("detections", {...})

One event loop per node: a selector over the NNG receive descriptors of every input and command
input, a self-pipe woken by signals, and the timers' deadlines; no thread per input. Heartbeats
to the supervisor are sent from inside this loop, so a node stuck in its own code stops
heartbeating. `Node.for_test(...)` runs the same node logic in-process without sockets.

Transport seam: a Node talks to the world outside its own code only through its `transport`
(the `Transport` protocol below): publishing, sending commands and records, reporting to the
supervisor, and waiting for what arrives (inputs, commands, wake-ups). In a graph that is an
`NngTransport`: an NNG `Publisher` per output, whose messages are also handed to in-process
subscribers (`iotrt.local.deliver`); per input an NNG `Subscriber`, or a `iotrt.local.LocalQueue`
when its publisher is a node of the same process group; command servers and clients; the
supervisor link. `Node.for_test` puts the same Node on an `iotrt.testing.FakeTransport`.

Errors: what a Node method raises is a `NodeError`: misuse as such (an undeclared output, an
unwired command output), and, for what went wrong on the way out, `NotEncodable` (data the
message contract refuses: nothing was sent), `CommandFailed` (the receiver refused or garbled
the message) and its `NoAck` (no acknowledgement within the attempts). A node catches these,
never the codec's or the command channel's own errors, which they also are (EncodeError,
CommandError, CommandTimeout), so older code that catches those keeps working.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import heapq
import logging
import os
import selectors
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol

from iotrt import errors, local, wakeup
from iotrt.bus import Publisher, Subscriber
from iotrt.codec import EncodeError, Envelope
from iotrt.command import Command, CommandClient, CommandError, CommandServer, CommandTimeout
from iotrt.config import ENV_THREADS
from iotrt.protocol import NodeConfig, SupervisorLink, deadline_body, node_created, record_body
from iotrt.spec import REQUIRED, NodeSpec, Param, ParamError, SpecError, load_spec
from iotrt.testing import FakeTransport, Published, SentCommand, resolve_target

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Node", "NodeEvent", "NodeSpec", "Param", "REQUIRED", "ParamError", "SpecError",
           "NodeError", "NotEncodable", "CommandFailed", "NoAck", "load_spec"]

MAX_TIMER_S = 86400.0   # a node's timer period: a day; longer waits are a mistake, not a schedule
PORT_NAMES = {"inputs": "input", "outputs": "output", "commands_in": "command input",
              "commands_out": "command output"}


def trim_heap() -> None:
    """Give the heap's free pages back to the kernel (glibc's malloc_trim(0)), once a node has
    started: imports and a model's loading leave freed memory inside the heap, which glibc
    keeps for later allocations that a steady loop does not make. Nothing where the C library
    has no malloc_trim (musl)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class NodeError(errors.ConfigError, RuntimeError):
    """Misuse of the Node API (unknown output, missing wiring, ...), and the base of every
    error a Node method raises (see the module docstring)."""


class NotEncodable(NodeError, EncodeError):
    """publish, command, record or ack with data the message contract refuses (iotrt.codec;
    the message says what); nothing was sent."""


class CommandFailed(NodeError, CommandError):
    """node.command, or node.record(sync=True) (the journal is a command channel too): the
    receiver refused the message itself or answered with a malformed ack."""


class NoAck(CommandFailed, CommandTimeout):
    """No acknowledgement arrived within the attempts: the receiver is down, busy or gone."""


def _api_errors(exc: Exception, what: str) -> NodeError:
    """The Node API's error for a codec or command channel error `exc` raised while doing
    `what` (raise it `from exc`)."""
    if isinstance(exc, NodeError):
        return exc
    cls = (NoAck if isinstance(exc, CommandTimeout) else CommandFailed
           if isinstance(exc, CommandError) else NotEncodable)
    return cls(f"{what}: {exc}")


@dataclass(slots=True)
class NodeEvent:
    """One thing for the node to handle.

    kind: "input" (a message on input `name`), "timer" (timer `name` fired, or the alarm
    `name` set with `node.alarm`), "command" (a command on command input `name`: answer it with
    `ack`), "post" (`node.post(name, data)` from another thread) or "reload" (SIGHUP).
    """

    kind: str
    name: str = ""
    data: Any = None
    envelope: Envelope | None = None
    command: Command | None = None

    @property
    def input(self) -> str | None:
        """The input (or command input) name, None for timers and reloads."""
        return self.name if self.kind in ("input", "command") else None

    @property
    def timer(self) -> str | None:
        return self.name if self.kind == "timer" else None

    @property
    def stamp_ns(self) -> int | None:
        return self.envelope.stamp_ns if self.envelope is not None else None

    @property
    def id(self) -> str | None:
        """The command id (commands only)."""
        return self.command.id if self.command is not None else None

    def ack(self, result: dict | None = None) -> dict:
        """Acknowledge a command: `result` is merged into {"id", "ok": True}; returns the ack."""
        if self.command is None:
            raise NodeError(f"only command events can be acknowledged, this is a {self.kind}")
        if self.command.answered:
            raise NodeError(f"command {self.command.id} was already answered")
        try:
            return self.command.reply(result)
        except EncodeError as exc:
            raise _api_errors(exc, f"ack of command {self.command.id}") from exc

    def nack(self, error: str) -> dict:
        """Refuse a command with a reason."""
        return self.ack({"ok": False, "error": error})


# What a transport delivers: (kind, name, item). "input": item is the Envelope on input `name`;
# "command": the Command on command input `name`; "wake": node.post or a stop woke the loop;
# "timer" and "reload" (item None): a test's tick or reload (iotrt.testing).
Arrival = tuple[str, str, Any]


class Transport(Protocol):
    """What a Node needs of the world outside its own code (see the module docstring)."""

    outputs: dict[str, Any]          # output name -> its publisher (the outputs wired)
    wakeup_fd: int | None            # for signal.set_wakeup_fd; None: take no signals

    def clock_ns(self) -> int: ...   # the timers' clock (monotonic ns)
    def wait(self, timeout_s: float) -> Iterable[Arrival] | None: ...   # None: nothing ever again
    def wake(self) -> None: ...      # end a wait() early (thread-safe)
    def publish(self, output: str, data: Any, stamp_ns: int, trace: list) -> None: ...
    def loan(self, output: str, shape: tuple, dtype: Any) -> np.ndarray | None: ...
    def call(self, output: str, data: Any, timeout_s: float, retries: int) -> dict: ...
    def record(self, body: dict, sync: bool) -> None: ...
    def deadline(self, in_s: float | None) -> bool: ...
    def ready(self) -> None: ...
    def heartbeat(self, stats: dict) -> None: ...
    def input_stats(self) -> dict: ...
    def close(self) -> None: ...


class NngTransport:
    """A node's transport in a graph (see the module docstring); standalone, with no addresses
    in its config, it has no sockets at all."""

    clock_ns = staticmethod(time.monotonic_ns)

    def __init__(self, config: NodeConfig):
        self.id = nid = config.id
        self.log = logging.getLogger(f"iotrt.node.{nid}")
        self._link = SupervisorLink(nid, config.supervisor)
        self.outputs = {n: Publisher(ep.address, ep.topic or f"{nid}/{n}", nid)
                        for n, ep in config.outputs.items()}
        self.inputs = {n: (local.LocalQueue if ep.local else Subscriber)(
                           ep.address, queue=ep.queue, name=f"{nid}.{n}")
                       for n, ep in config.inputs.items()}
        store_dir = os.path.join(config.state_dir, "commands") if config.state_dir else None
        self.commands_in = {
            n: CommandServer(ep.address, name=f"{nid}.{n}",
                             store_path=os.path.join(store_dir, f"{nid}.{n}.ids")
                             if store_dir else None)
            for n, ep in config.commands_in.items()
        }
        self.commands_out = {n: CommandClient(ep.address, src=nid)
                             for n, ep in config.commands_out.items()}
        self._journal = CommandClient(config.journal, src=nid) if config.journal else None
        self._wake_r, self.wakeup_fd = wakeup.pipe()
        self._sel = selectors.DefaultSelector()
        for name, sub in self.inputs.items():
            self._sel.register(sub.fileno(), selectors.EVENT_READ, ("input", name, sub))
        for name, srv in self.commands_in.items():
            self._sel.register(srv.fileno(), selectors.EVENT_READ, ("command", name, srv))
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", "", None))

    def wait(self, timeout_s: float) -> Iterator[Arrival]:
        # lazily: each message is taken off its socket only when the node is ready for it, so
        # a latest-wins input hands over the newest it has by then
        for key, _ in self._sel.select(timeout_s):
            kind, name, source = key.data
            if kind == "wake":
                wakeup.drain(self._wake_r)
                yield kind, name, None
                continue
            item = source.recv_nowait()
            if item is not None:   # None: undecodable, overwritten, or a duplicate command
                yield kind, name, item    # answered from the store: counted by the source

    def wake(self) -> None:
        if self.wakeup_fd < 0:
            return  # closed already: nothing left to wake
        wakeup.wake(self.wakeup_fd)

    def publish(self, output: str, data: Any, stamp_ns: int, trace: list) -> None:
        pub = self.outputs.get(output)
        if pub is None:
            return     # declared by the SPEC, wired to nothing in this graph
        queues = local.subscribers(pub.address)
        if queues:   # validate and hand over first: what NNG could not carry fails here too
            try:
                shared = local.share(data)
            except EncodeError as exc:      # worded as the codec words it for NNG
                raise EncodeError(f"cannot publish on {pub.topic!r}: {exc}") from exc
            seq = pub.publish(shared, stamp_ns, trace)
            local.deliver(Envelope(pub.topic, seq, stamp_ns, self.id, trace, shared), queues)
        else:
            pub.publish(data, stamp_ns, trace)

    def loan(self, output: str, shape: tuple, dtype: Any) -> np.ndarray | None:
        pub = self.outputs.get(output)
        return None if pub is None else pub.loan(shape, dtype)

    def call(self, output: str, data: Any, timeout_s: float, retries: int) -> dict:
        client = self.commands_out.get(output)
        if client is None:
            raise NodeError(f"node {self.id!r}: command output {output!r} is not connected "
                            f"(wired: {', '.join(self.commands_out) or 'none'})")
        return client.call(data, timeout_s=timeout_s, retries=retries)

    def record(self, body: dict, sync: bool) -> None:
        if sync and self._journal is not None:
            ack = self._journal.call(body)
            if not ack.get("ok"):
                raise CommandError(f"journal refused record {body['kind']!r}: {ack.get('error')}")
        elif not self._link.record(body):
            self.log.info("record %s %s", body["kind"], body["fields"])

    def deadline(self, in_s: float | None) -> bool:
        if self._journal is None:
            return True     # standalone: no supervisor, no backstop to arm
        try:
            ack = self._journal.call(deadline_body(self.id, in_s), timeout_s=0.5, retries=3)
        except CommandError as exc:
            self.log.error("the supervisor did not acknowledge a safety deadline: %s", exc)
            return False
        if not ack.get("ok"):
            self.log.error("the supervisor refused a safety deadline: %s", ack.get("error"))
        return bool(ack.get("ok"))

    def ready(self) -> None:
        self._link.ready()

    def heartbeat(self, stats: dict) -> None:
        self._link.heartbeat(stats)

    def input_stats(self) -> dict:
        return {n: s.stats() for n, s in self.inputs.items()}

    def close(self) -> None:
        if self.wakeup_fd < 0:
            return
        for group in (self.inputs, self.outputs, self.commands_in, self.commands_out):
            for endpoint in group.values():
                endpoint.close()
        if self._journal is not None:
            self._journal.close()
        self._link.close()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self.wakeup_fd)
        self.wakeup_fd = -1


class Node:
    """A running node. See the module docstring and docs/nodes.md."""

    def __init__(self, config: NodeConfig | None = None, *, spec: NodeSpec | None = None,
                 id: str | None = None, params: dict | None = None,
                 transport: Transport | None = None):
        if config is None:
            config = NodeConfig.from_env()
        if config is None:  # standalone: no supervisor, no sockets
            stem = os.path.splitext(os.path.basename(sys.argv[0] or "node"))[0] or "node"
            config = NodeConfig(id=id or stem, params=params or {})
        self.config = config
        self.id = config.id
        self.spec = spec
        self.log = logging.getLogger(f"iotrt.node.{self.id}")
        self.params = (spec.validate_params(config.params, f"node {self.id!r}")
                       if spec is not None else dict(config.params))
        self._current: Envelope | None = None
        self._open_command: Command | None = None
        self._timers: list[tuple[int, int, str]] = []  # heap of (due_ns, period_ns, name);
        #                                                  period 0: a one-shot alarm
        self._posted: collections.deque[NodeEvent] = collections.deque()
        self._stop = threading.Event()
        self._reloads = 0
        self._closed = False
        self.transport: Transport = NngTransport(config) if transport is None else transport
        self._out_msgs: dict[str, int] = dict.fromkeys(self.transport.outputs, 0)
        self._install_signals()
        threads = os.environ.get(ENV_THREADS)
        # getattr: in a process group another node's thread may be half-way through `import cv2`
        set_threads = getattr(sys.modules.get("cv2"), "setNumThreads", None)
        if threads and set_threads is not None:
            set_threads(int(threads))
        node_created(self)

    def _install_signals(self) -> None:
        self._old_signals: dict[int, Any] = {}
        if self.transport.wakeup_fd is None:
            return
        if threading.current_thread() is not threading.main_thread():
            self.log.debug("not in the main thread: stop with node.stop(), no signal handling")
            return
        # the handlers only set flags; the wake-up fd gets the loop out of its wait at once
        signal.set_wakeup_fd(self.transport.wakeup_fd, warn_on_full_buffer=False)
        for sig, handler in ((signal.SIGTERM, lambda *_: self._stop.set()),
                             (signal.SIGINT, lambda *_: self._stop.set()),
                             (signal.SIGHUP, lambda *_: self._request_reload())):
            self._old_signals[sig] = signal.signal(sig, handler)
        # a script's node is never closed explicitly: its shared memory must still go
        atexit.register(self.close)

    def _request_reload(self) -> None:
        """SIGHUP, or the process group's main thread passing one on (thread-safe)."""
        self._reloads += 1
        self.transport.wake()

    def _check_port(self, group: str, name: str) -> None:
        if self.spec is not None and not self.spec.has_port(group, name):
            declared = ", ".join(getattr(self.spec, group)) or "none"
            raise NodeError(f"node {self.id!r} has no {PORT_NAMES[group]} {name!r} "
                            f"(declared: {declared})")

    # -- the API -----------------------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the event loop to end (thread-safe; SIGTERM does the same)."""
        self._stop.set()
        self.transport.wake()

    def post(self, name: str, data: Any = None) -> None:
        """Deliver an event of kind "post" named `name` to this node's loop (thread-safe).

        How a worker thread (a safety timer, a driver's reader) wakes the loop when it has
        something for it, instead of the loop polling on a short timer."""
        self._posted.append(NodeEvent("post", name, data))
        self.transport.wake()

    def ready(self) -> None:
        """Tell the supervisor start-up is done (also implied by the first loop iteration)."""
        self.transport.ready()

    def timer(self, name: str, period_s: float, first_s: float | None = None) -> None:
        """Fire a "timer" event named `name` every `period_s` (first after `first_s`).

        Fixed rate: ticks are due at start + k * period; ticks missed while the node was busy
        are skipped rather than delivered in a burst.
        """
        # NaN fails these comparisons too; an infinite or huge value would overflow int(s * 1e9)
        if not 0 < period_s <= MAX_TIMER_S:
            raise ValueError(f"timer {name!r}: period must be more than 0 and at most "
                             f"{MAX_TIMER_S:g} s (a day), not {period_s}")
        if first_s is not None and not 0 <= first_s <= MAX_TIMER_S:
            raise ValueError(f"timer {name!r}: first tick must be 0 to {MAX_TIMER_S:g} s, "
                             f"not {first_s}")
        period = int(period_s * 1e9)
        first = period if first_s is None else int(first_s * 1e9)
        heapq.heappush(self._timers, (self.transport.clock_ns() + first, period, name))

    def alarm(self, name: str, at: float | None) -> None:
        """A one-shot "timer" event named `name` at monotonic time `at` (seconds, as
        time.monotonic()), replacing this name's earlier alarm; None cancels it. From the
        node's own thread (use `post` from others). E.g. sleep until a rule engine is due."""
        self._timers = [t for t in self._timers if not (t[2] == name and t[1] == 0)]
        heapq.heapify(self._timers)
        if at is not None:
            heapq.heappush(self._timers, (int(at * 1e9), 0, name))

    def publish(self, output: str, data: Any, stamp_ns: int | None = None) -> None:
        """Publish on `output`. stamp_ns and trace are inherited from the event being handled
        (a new reading from a sensor passes its capture time as `stamp_ns`; so does a worker
        thread, which would otherwise inherit whatever event the loop is on)."""
        if output not in self._out_msgs:
            if not (output in self.config.outputs
                    or (self.spec is not None and self.spec.has_port("outputs", output))):
                declared = list(self.config.outputs) or (
                    list(self.spec.outputs) if self.spec is not None else [])
                raise NodeError(f"node {self.id!r} has no output {output!r} "
                                f"(outputs: {', '.join(declared) or 'none'})")
            self._out_msgs[output] = 0
        cur = self._current
        now = time.monotonic_ns()
        if stamp_ns is None:
            stamp_ns = cur.stamp_ns if cur is not None else now
        trace = (list(cur.trace) if cur is not None else []) + [[self.id, now]]
        try:
            self.transport.publish(output, data, stamp_ns, trace)
        except EncodeError as exc:    # its message names the topic
            raise _api_errors(exc, f"node {self.id!r}") from exc
        self._out_msgs[output] += 1

    def loan(self, output: str, shape: tuple, dtype: Any = "uint8") -> np.ndarray:
        """A writable frame to fill in place and publish on `output` without a copy, e.g.
        `frame = node.loan("image", (480, 640, 3)); ok, _ = cap.read(frame)`, then
        `node.publish("image", frame)`. Read-only once published; take one per frame."""
        frame = self.transport.loan(output, shape, dtype)
        if frame is not None:
            return frame
        import numpy as np  # light by default: numpy only for a node that uses arrays
        return np.empty(shape, dtype)

    def command(self, output: str, data: Any, *, timeout_s: float = 1.0,
                retries: int = 4) -> dict:
        """Send a command on a command output and wait for its ack (thread-safe).

        Returns the ack map (check `ack["ok"]`); raises NoAck when no ack arrives,
        CommandFailed when the receiver refused the message, NotEncodable for data the
        message contract refuses.
        """
        self._check_port("commands_out", output)
        try:
            return self.transport.call(output, data, timeout_s, retries)
        except (CommandError, EncodeError) as exc:
            raise _api_errors(exc, f"node {self.id!r}: command on {output!r}") from exc

    def safety_deadline(self, in_s: float | None) -> bool:
        """Arm the supervisor's backstop: unless this is called again within `in_s` seconds
        (+ a short grace), the supervisor SIGKILLs this node's process, which restarts in its
        safe state. `None` disarms it. For a safety action that must end even if this process
        freezes (a door's re-lock): report the deadline BEFORE starting the action, and do not
        start it when this returns False (the supervisor did not acknowledge). Thread-safe;
        only for nodes whose SPEC says `safety=True`. Standalone: does nothing, returns True."""
        return self.transport.deadline(in_s)

    def record(self, kind: str, sync: bool = False, **fields: Any) -> None:
        """Send an event to the journal. sync=True waits until the supervisor wrote it (NoAck
        when it does not answer, CommandFailed when it could not write the record)."""
        try:
            self.transport.record(record_body(self.id, kind, fields), sync)
        except (CommandError, EncodeError) as exc:
            raise _api_errors(exc, f"node {self.id!r}: record {kind!r}") from exc

    def stats(self) -> dict:
        return {"in": self.transport.input_stats(),
                "out": {n: {"msgs": c} for n, c in self._out_msgs.items()}}

    def __iter__(self) -> Iterator[NodeEvent]:
        return self._events()

    def close(self) -> None:
        """Close every socket, remove this node's shared memory, restore signal handlers."""
        if self._closed:
            return
        self._closed = True
        if self._old_signals and threading.current_thread() is threading.main_thread():
            # the transport closes this Node's pipe below: signals must not go on writing to
            # that fd number (reused by the next open file); another Node's pipe stays
            installed = signal.set_wakeup_fd(-1)
            if installed != self.transport.wakeup_fd:
                signal.set_wakeup_fd(installed)
            for sig, old in self._old_signals.items():
                signal.signal(sig, old)
            atexit.unregister(self.close)
        self.transport.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the event loop ----------------------------------------------------------------------

    def _before_next(self) -> None:
        """Housekeeping between two events: unanswered commands, the current envelope."""
        self._current = None
        cmd, self._open_command = self._open_command, None
        if cmd is not None and not cmd.answered:
            self.log.warning("command %s was not acknowledged; answering with an error", cmd.id)
            cmd.reply({"ok": False, "error": f"node {self.id!r} did not acknowledge"})

    def _deliver(self, event: NodeEvent) -> NodeEvent:
        self._current = event.envelope
        self._open_command = event.command
        return event

    def _due_timers(self, now: int) -> list[NodeEvent]:
        events = []
        while self._timers and self._timers[0][0] <= now:
            due, period, name = heapq.heappop(self._timers)
            events.append(NodeEvent("timer", name))
            if period == 0:
                continue        # a one-shot alarm
            nxt = due + period
            if nxt <= now:  # fell behind: skip the missed ticks
                nxt = now + period - (now - due) % period
            heapq.heappush(self._timers, (nxt, period, name))
        return events

    def _events(self) -> Iterator[NodeEvent]:
        tp = self.transport
        tp.ready()
        trim_heap()
        hb_period = int(self.config.heartbeat_s * 1e9)
        next_hb = tp.clock_ns()
        reloads_seen = self._reloads
        try:
            while not self._stop.is_set():
                self._before_next()
                now = tp.clock_ns()
                if now >= next_hb:
                    tp.heartbeat(self.stats())
                    next_hb = now + hb_period
                for event in self._due_timers(now):
                    yield self._deliver(event)
                    self._before_next()
                    if self._stop.is_set():
                        return
                if self._reloads != reloads_seen:
                    reloads_seen = self._reloads
                    yield self._deliver(NodeEvent("reload"))
                    continue
                deadline = min([next_hb] + [t[0] for t in self._timers[:1]])
                arrivals = tp.wait(max(0.0, (deadline - tp.clock_ns()) / 1e9))
                if arrivals is None:
                    return      # the transport has nothing more to deliver (a test's queue)
                for kind, name, item in arrivals:
                    if kind == "wake":
                        while self._posted and not self._stop.is_set():
                            self._before_next()
                            yield self._deliver(self._posted.popleft())
                        continue
                    if kind == "input":
                        event = NodeEvent(kind, name, item.data, item)
                    elif kind == "command":
                        event = NodeEvent(kind, name, item.data, command=item)
                    else:
                        event = NodeEvent(kind, name)
                    self._before_next()
                    yield self._deliver(event)
                    if self._stop.is_set():
                        return
        finally:
            self._before_next()

    # -- testing -----------------------------------------------------------------------------

    @staticmethod
    def for_test(target: Any, params: dict | None = None, id: str = "test") -> TestNode:
        """A node without sockets for unit tests: feed events, inspect what it sent.

        `target` is a NodeSpec, a node module (object or import path) or a script path.
        """
        return TestNode(target, params=params, id=id)


class TestNode(Node):
    """What `Node.for_test` returns: a Node on a `FakeTransport` (iotrt.testing), with the
    fake's feeding and inspecting at hand. `run()` runs the target's main(node) until every
    queued arrival is handled."""

    __test__ = False  # not a pytest test class

    def __init__(self, target: Any, params: dict | None = None, id: str = "test"):
        spec, self._main = resolve_target(target)
        self.fake = FakeTransport(id)
        super().__init__(NodeConfig(id=id, params=params or {}), spec=spec, transport=self.fake)

    def feed(self, input: str, data: Any, *, stamp_ns: int | None = None,
             trace: list | None = None, src: str = "upstream") -> TestNode:
        """Queue a message on `input` (encoded and decoded like a real one)."""
        self._check_port("inputs", input)
        self.fake.feed(input, data, stamp_ns=stamp_ns, trace=trace, src=src)
        return self

    def tick(self, timer: str) -> TestNode:
        """Queue a tick of timer `timer`."""
        self.fake.tick(timer)
        return self

    def feed_command(self, name: str, data: Any, *, id: str | None = None) -> TestNode:
        """Queue a command on command input `name`; the node's ack lands in `acks`."""
        self._check_port("commands_in", name)
        self.fake.feed_command(name, data, id=id)
        return self

    def feed_reload(self) -> TestNode:
        self.fake.feed_reload()
        return self

    def run(self) -> TestNode:
        if self._main is None:
            raise NodeError("this target has no main(node) to run; iterate the node instead")
        self._main(self)
        return self

    @property
    def published(self) -> list[Published]:
        return self.fake.published

    @property
    def commands(self) -> list[SentCommand]:
        return self.fake.commands

    @property
    def records(self) -> list[tuple[str, dict]]:
        return self.fake.records

    @property
    def deadlines(self) -> list[float | None]:
        return self.fake.deadlines

    @property
    def acks(self) -> list[dict]:
        return self.fake.acks

    @acks.setter
    def acks(self, acks: list[dict]) -> None:
        self.fake.acks = acks

    @property
    def responder(self) -> Any:
        """`responder(output, data) -> ack fields`, or None for a lost ack (default: ok)."""
        return self.fake.responder

    @responder.setter
    def responder(self, responder: Any) -> None:
        self.fake.responder = responder
