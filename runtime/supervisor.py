"""The supervisor: runs a validated graph, one OS process per node or process group, until told
to stop. A process group (nodes sharing `process:`) is one `Slot`: started, restarted and
backed off as one, with readiness and heartbeats tracked per node.

Everything happens in one thread, in one select() loop over: the node->supervisor Pull0 (ready,
heartbeats, journal records), the journal command channel (records a node waits for), the
control socket (`iotrt ps/topics/down/reload`), each node's pidfd (it ended) and output pipes,
and a wake-up pipe for signals. That thread also does every spawn, which matters: a child's
PR_SET_PDEATHSIG fires when the *thread* that forked it ends, not the process.

Per node, `iotrt.states.transition` decides (restart, backoff, give up, kill); this module only
carries its actions out and adds what spans nodes: the start order, the graph's readiness, the
exit code, systemd's READY/WATCHDOG/STATUS/STOPPING, lifecycle events on `_sup/events`.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import threading
import time
from typing import Callable

import pynng

from iotrt import shm, wakeup
from iotrt.bus import Publisher, ensure_runtime_dir, recv_bytes
from iotrt.codec import DecodeError, pack, unpack
from iotrt.command import CommandServer
from iotrt.console import SHOWN, decision_line
from iotrt.control import REQUEST_KEY, Rates, Usage, process_row, ps_row, topics_table
from iotrt.errors import SupervisionError
from iotrt.graph import EVENTS_TOPIC, Graph
from iotrt.journal import BadRecord, Journal, JournalError
from iotrt.outpump import OutputPump, Throttle, route_logging, unroute_logging
from iotrt.procs import NodeProcess, node_env, terminate_all
from iotrt.protocol import MAX_CONTROL_MESSAGE, deadline_in_s, parse_message
from iotrt.sdnotify import Notifier
from iotrt.states import (
    DONE,
    Deadline,
    Done,
    Exited,
    GiveUp,
    Heartbeat,
    Ready,
    Signal,
    Slot,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    State,
    Stop,
    TimePassed,
    next_deadline,
    transition,
)

log = logging.getLogger("iotrt.supervisor")
decisions = logging.getLogger("iotrt.events")    # one line per decision: iotrt.console
RESTART_ORDER = ("never", "on-failure", "always")

EXIT_OK = 0
EXIT_GAVE_UP = 1          # a critical node failed for good: systemd should escalate
EXIT_SETUP = 2            # could not even start (sockets, journal, already running)
START_SLOT_S = 2.0        # see Supervisor._start_ready_nodes
# Node messages (and control requests) are read for at most this long per turn of the loop: a
# node that floods its socket with messages that are slow to reject must not hold the loop (signals, `iotrt ps`,
# timers are served in between), and the socket queues few, so that every node's pipe gets its
# turn (a heartbeat does not wait behind a backlog of another node's junk)
MESSAGES_BUDGET_S = 0.02
NODE_QUEUE = 4


class SupervisorError(SupervisionError, RuntimeError):
    """The supervisor cannot start (another instance runs, the runtime folder is not ours...)."""

    exit_code = 2     # EXIT_SETUP


def start_dependencies(graph: Graph) -> dict[str, set[str]]:
    """process -> the processes that must be running before it starts.

    Only what a node truly needs up front: the actuators its command outputs dial. A command
    sent before its receiver listens would wait out its ack timeouts, and an actuator (a
    safety-critical lock) is then running, in its safe state, before anything can command it.
    A subscriber needs nothing: it dials in the background and receives from the moment its
    publisher listens, so a pipeline's processes start in one wave, not one readiness round
    per stage. Taken from the graph's full start order, which is acyclic (the members of a
    cycle do not wait for each other), so this never deadlocks either."""
    order = graph.process_dependencies()
    commanders: dict[str, set[str]] = {p: set() for p in order}
    for n in graph.nodes.values():
        for wires in n.commands.values():
            for wire in wires:
                sender = graph.nodes.get(wire.node)    # None: a node `iotrt replay` replaced
                if sender is not None:
                    commanders[sender.process].add(n.process)
    return {p: order[p] & commanders[p] for p in order}


class Supervisor:
    def __init__(self, graph: Graph, *, log_level: str = "INFO", environ: dict | None = None):
        self.graph = graph
        self.log_level = log_level
        self.clock = time.monotonic
        self.environ = dict(os.environ if environ is None else environ)
        p = graph.policy
        self.slots: dict[str, Slot] = {}           # process name -> its supervision record
        for name, ids in graph.processes().items():
            members = [graph.nodes[i] for i in ids]
            self.slots[name] = Slot(
                name, members=tuple(ids),
                # a group restarts as readily as its most demanding node asks, and is
                # critical if any of its nodes is
                restart=max((n.restart for n in members), key=RESTART_ORDER.index),
                critical=any(n.critical for n in members),
                backstop=any(n.spec is not None and n.spec.safety for n in members),
                start_timeout_s=max(n.start_timeout_s for n in members),
                liveness_s=p.liveness_s, stop_grace_s=p.stop_grace_s, backoff=p.backoff,
                intensity=p.intensity)
        self.process_of = {nid: n.process for nid, n in graph.nodes.items()}
        self.deps = start_dependencies(graph)
        self.start_slots = len(os.sched_getaffinity(0))    # the CPUs this process may use
        self.procs: dict[str, NodeProcess] = {}
        self.rates: dict[str, Rates] = {nid: Rates() for nid in graph.nodes}
        self.usage = Usage()
        self.exit_code = EXIT_OK
        self.stopping = False
        self.ready_sent = False
        self.started_at = 0.0
        self.notifier = Notifier(self.environ)
        self._wake_r, self._wake_w = wakeup.pipe()
        self._reload_requested = False
        self._kill_now = False
        self._next_ping = 0.0
        self._withholding = False
        self._last_status = ""
        self._throttle = Throttle()

    # -- public -------------------------------------------------------------------------------

    def request_stop(self, reason: str = "stop requested", code: int = EXIT_OK) -> None:
        """Begin an orderly stop (safe from a signal handler or another thread)."""
        if self.stopping and reason in ("SIGINT", "SIGTERM"):
            # a second Ctrl-C: the user does not want to wait for the grace period
            self._kill_now = True
        if not self.stopping:
            log.info("stopping graph %s: %s", self.graph.name, reason)
            self.exit_code = max(self.exit_code, code)
            self.stopping = True
        self._wake()

    def run(self) -> int:
        """Start the graph and supervise it until it stops; return the process exit code."""
        self.pump = OutputPump()
        swapped = route_logging(self.pump)
        try:
            self._open()
            try:
                self._loop()
            finally:
                self._close()
        finally:
            unroute_logging(swapped)
            self.pump.close()
            if self.pump.dropped_total:
                log.warning("%d output lines were dropped: the log reader did not keep up",
                            self.pump.dropped_total)
        return self.exit_code

    # -- set-up and tear-down -----------------------------------------------------------------

    def _open(self) -> None:
        g = self.graph
        try:   # how the loop hears a node end; refuse up front rather than lose track of nodes
            os.close(os.pidfd_open(os.getpid()))
        except (AttributeError, OSError) as exc:
            raise SupervisorError(f"the supervisor needs Linux 5.3 or newer (pidfd_open): {exc}") from exc
        try:
            ensure_runtime_dir(g.runtime_dir)
        except OSError as exc:
            raise SupervisorError(f"cannot use the runtime folder {g.runtime_dir}: {exc}") from exc
        self.sel = selectors.DefaultSelector()
        # The control socket first: if another supervisor runs this graph, listen fails here,
        # before we touch any of its sockets.
        # Replies are sent without waiting (a client that does not read them must not stall
        # the loop: the reply is dropped), and no request is larger than a control message.
        self.ctl = pynng.Rep0(recv_max_size=MAX_CONTROL_MESSAGE)
        try:
            self.ctl.listen(g.control_address)
        except pynng.AddressInUse as exc:
            self.ctl.close()
            raise SupervisorError(
                f"graph '{g.name}' is already running (its control socket {g.control_address} "
                "answers); stop it first with 'iotrt down'") from exc
        self.pull = pynng.Pull0(listen=g.supervisor_address, recv_max_size=MAX_CONTROL_MESSAGE,
                                recv_buffer_size=NODE_QUEUE)
        try:
            self.journal = Journal(g.journal_path)
        except JournalError as exc:
            self.ctl.close()
            self.pull.close()
            raise SupervisorError(str(exc)) from exc
        self.records = CommandServer(g.journal_address, name="journal")
        self.events = Publisher(g.events_address, EVENTS_TOPIC, "_sup", shm_threshold=None)
        self.sel.register(self.pull.recv_fd, selectors.EVENT_READ, self._on_node_messages)
        self.sel.register(self.ctl.recv_fd, selectors.EVENT_READ, self._on_control)
        self.sel.register(self.records.fileno(), selectors.EVENT_READ, self._on_sync_records)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
            signal.signal(signal.SIGTERM, lambda *_: self.request_stop("SIGTERM"))
            signal.signal(signal.SIGINT, lambda *_: self.request_stop("SIGINT"))
            signal.signal(signal.SIGHUP, lambda *_: self._request_reload())
        self.started_at = self.clock()
        self._next_ping = self.started_at
        log.info("graph %s: %d nodes in %d processes, sockets in %s, journal %s", g.name,
                 len(g.nodes), len(self.slots), g.runtime_dir, g.journal_path)
        self._status(f"starting {len(g.nodes)} nodes")

    def _close(self) -> None:
        live = [p for p in self.procs.values() if p.popen.poll() is None]
        if live:   # only when the loop itself failed: never leave a node behind
            log.error("supervisor loop ended with %d nodes alive; terminating them", len(live))
            terminate_all(live, self.graph.policy.stop_grace_s)
        for p in self.procs.values():
            p.close_pipes()
        self.notifier.notify("STOPPING=1", f"STATUS=stopped (exit code {self.exit_code})")
        for closer in (self.events.close, self.records.close, self.pull.close, self.ctl.close,
                       self.journal.close, self.sel.close, self.notifier.close):
            closer()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(-1)

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        stop_sent = False
        while True:
            now = self.clock()
            for slot in self.slots.values():
                self._apply(slot, TimePassed(), now)
            if self.stopping and not stop_sent:
                stop_sent = True
                self.notifier.notify("STOPPING=1", "STATUS=stopping")
                for slot in self.slots.values():
                    self._apply(slot, Stop(), now)
            if self._kill_now:
                self._kill_now = False
                log.warning("second stop signal: killing every node now")
                for nid, proc in self.procs.items():
                    if self.slots[nid].state == State.STOPPING:
                        proc.signal(signal.SIGKILL)
            if not self.stopping:
                self._start_ready_nodes(now)
                self._check_graph(now)
            if all(s.state in DONE for s in self.slots.values()) and (stop_sent or self._all_settled()):
                if not self.stopping:
                    log.info("graph %s: every node has ended; nothing left to supervise", self.graph.name)
                    if any(s.state == State.FAILED for s in self.slots.values()):
                        self.exit_code = max(self.exit_code, EXIT_GAVE_UP)
                return
            self._watchdog(now)
            for key, _ in self.sel.select(self._timeout(self.clock())):
                key.data(key.fd)

    def _timeout(self, now: float) -> float:
        deadlines = [d for s in self.slots.values() if (d := next_deadline(s)) is not None]
        if (frees := self._start_slot_frees(now)) is not None:
            deadlines.append(frees)
        if self.notifier.watchdog_s:
            deadlines.append(self._next_ping)
        if not deadlines:
            return 60.0
        return min(60.0, max(0.0, min(deadlines) - now))

    def _all_settled(self) -> bool:
        return all(s.wanted or s.state != State.STOPPED for s in self.slots.values())

    def _start_ready_nodes(self, now: float) -> None:
        """Start not-yet-started processes whose start dependencies are up (or ended for good),
        in the graph's order, while fewer than `start_slots` processes are starting: start-up
        is CPU-bound (imports, model loading), so starting more at once than there are CPUs
        only time-slices them and delays the first ones (on a loaded 2-CPU machine, the door
        graph's first detection came later with all four processes starting at once). A
        process starting for longer than START_SLOT_S (a device to open, a model to compile)
        stops holding the others back."""
        busy = sum(1 for s in self.slots.values()
                   if s.state == State.STARTING and now - s.since < START_SLOT_S)
        for nid, slot in self.slots.items():
            if busy >= self.start_slots:
                return
            if slot.wanted or slot.state != State.STOPPED:
                continue
            if all(self.slots[d].state in (State.RUNNING, State.EXITED, State.FAILED)
                   for d in self.deps[nid]):
                self._apply(slot, Start(), now)
                busy += 1

    def _start_slot_frees(self, now: float) -> float | None:
        """When a start slot frees by time alone, while a process waits to start."""
        if self.stopping or self._all_settled():   # every process was started
            return None
        return min((s.since + START_SLOT_S for s in self.slots.values()
                    if s.state == State.STARTING and s.since + START_SLOT_S > now), default=None)

    def _check_graph(self, now: float) -> None:
        if self.ready_sent:
            return
        if all(s.state in (State.RUNNING, State.EXITED, State.FAILED) for s in self.slots.values()):
            # Every process is running or has ended for good. "Up" means it sent ready and did
            # not fail: a node that ended before it was ready (a file with nothing to run) or
            # gave up is named, never counted.
            self.ready_sent = True
            took = now - self.started_at
            down = [(nid, s) for s in self.slots.values()
                    if not (s.state == State.RUNNING
                            or (s.state == State.EXITED and s.running_since is not None))
                    for nid in s.members]
            up = len(self.graph.nodes) - len(down)
            if down:
                log.warning("graph %s: %d of %d nodes up in %.2fs; not up: %s",
                            self.graph.name, up, len(self.graph.nodes), took,
                            "; ".join(f"{nid} {s.state.value} ({s.reason})" for nid, s in down))
            else:
                log.info("graph %s: all %d nodes up in %.2fs", self.graph.name, up, took)
            self.notifier.notify("READY=1")
            self._status(self._summary())
            self._publish_event({"event": "graph_ready", "graph": self.graph.name, "startup_s": took,
                                 "up": up, "not_up": [nid for nid, _ in down]})

    def _watchdog(self, now: float) -> None:
        if not self.notifier.watchdog_s or now < self._next_ping:
            return
        self._next_ping = now + self.notifier.watchdog_s / 2
        p = self.graph.policy
        down = [s.id for s in self.slots.values() if not s.healthy(now, p.critical_down_s)]
        if down:
            if not self._withholding:
                log.error("critical node(s) %s down for more than %gs: withholding the systemd "
                          "watchdog ping", ", ".join(down), p.critical_down_s)
                self._status(f"unhealthy: {', '.join(down)} down")
            self._withholding = True
            return
        if self._withholding:
            self._withholding = False
            self._status(self._summary())
        self.notifier.notify("WATCHDOG=1")

    # -- applying the state machine -----------------------------------------------------------

    def _apply(self, slot: Slot, event, now: float) -> None:
        before, reason_before = slot.state, slot.reason
        for action in transition(slot, event, now):
            if isinstance(action, Spawn):
                self._spawn(slot, now)
            elif isinstance(action, Signal):
                proc = self.procs.get(slot.id)
                if proc is not None:
                    proc.signal(action.signum)
            elif isinstance(action, GiveUp):
                if slot.critical:
                    self.request_stop(f"critical node {action.reason}", EXIT_GAVE_UP)
                else:
                    log.error("giving up on non-critical node %s; the graph keeps running",
                              action.reason)
        if slot.state != before or slot.reason != reason_before:
            self._lifecycle(slot, before)

    def _spawn(self, slot: Slot, now: float) -> None:
        old = self.procs.pop(slot.id, None)
        if old is not None:     # its output pipes may outlive it (a grandchild holds them)
            for fd in old.pipes:
                self.sel.unregister(fd)
            old.close_pipes()
        try:
            env = node_env(self.graph, slot.id, self.log_level, self.environ)
            proc = NodeProcess(self.graph, slot.id, env, self.pump)
        except OSError as exc:
            self._apply(slot, SpawnFailed(str(exc)), now)
            return
        self.procs[slot.id] = proc
        self.sel.register(proc.pidfd, selectors.EVENT_READ, lambda fd, nid=slot.id: self._on_exit(nid))
        for fd in proc.pipes:
            self.sel.register(fd, selectors.EVENT_READ, lambda fd, p=proc: self._on_output(p, fd))
        self._apply(slot, Spawned(proc.pid), now)

    def _lifecycle(self, slot: Slot, before: State) -> None:
        level = logging.WARNING if slot.state in (State.BACKOFF, State.STOPPING) and slot.wanted else logging.INFO
        if slot.state == State.FAILED:
            level = logging.ERROR
        pid = f" pid {slot.pid}" if slot.pid else ""
        log.log(level, "%s: %s -> %s%s (%s)", slot.id, before.value, slot.state.value, pid, slot.reason)
        event = {"event": "node_state", "node": slot.id, "state": slot.state.value,
                 "prev": before.value, "pid": slot.pid, "reason": slot.reason,
                 "restarts": slot.restarts, "nodes": list(slot.members)}
        self._publish_event(event)
        if slot.state != before:
            # one row per node (of a process group too), so `iotrt events` and readers of the
            # journal follow a node by its id; "process" says which OS process it lives in
            fields = {k: event[k] for k in ("state", "prev", "pid", "reason")}
            for nid in slot.members:
                self._journal("lifecycle", nid, {**fields, "process": slot.id})
            if slot.state in DONE:
                # A node that was killed could not unlink its frame rings; a restart would
                # reclaim them, but a node that stays down must not leave them in /dev/shm.
                for nid in slot.members:
                    for output in self.graph.nodes[nid].outputs:
                        shm.reclaim(self.graph.output_address(nid, output))
            if self.ready_sent and not self.stopping and not self._withholding:
                self._status(self._summary())

    def _publish_event(self, data: dict) -> None:
        self.events.publish(data)

    def _journal(self, kind: str, node: str, fields: dict) -> int | None:
        try:
            return self.journal.write(kind, node, fields)
        except JournalError as exc:
            log.error("journal write failed (%s/%s): %s", node, kind, exc)
            return None

    def _status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.notifier.notify(f"STATUS={text}")

    def _summary(self) -> str:
        """`systemctl status` line: how many processes run, and what the others are doing."""
        others = [f"{s.id} {s.state.value}" for s in self.slots.values() if s.state != State.RUNNING]
        running = len(self.slots) - len(others)
        what = "nodes" if len(self.slots) == len(self.graph.nodes) else "processes"
        return f"{running}/{len(self.slots)} {what} running" + (f"; {', '.join(others)}" if others else "")

    # -- handlers for readable fds -----------------------------------------------------------

    def _on_exit(self, nid: str) -> None:
        proc = self.procs[nid]
        self.sel.unregister(proc.pidfd)
        code = proc.reap()
        self.usage.forget(proc.pid)
        self._apply(self.slots[nid], Exited(proc.pid, code), self.clock())

    def _on_output(self, proc: NodeProcess, fd: int) -> None:
        if not proc.forward(fd):
            self.sel.unregister(fd)

    def _on_wake(self, fd: int) -> None:
        wakeup.drain(fd)
        if self._reload_requested:
            self._reload_requested = False
            self._reload(None)

    def _request_reload(self) -> None:
        self._reload_requested = True
        self._wake()

    def _wake(self) -> None:
        wakeup.wake(self._wake_w)

    def _on_node_messages(self, fd: int) -> None:
        now = self.clock()
        until = time.monotonic() + MESSAGES_BUDGET_S
        while time.monotonic() < until:   # the rest on the next turn: the fd stays readable
            try:
                buf = recv_bytes(self.pull, block=False)
            except pynng.TryAgain:
                return
            try:
                msg = parse_message(buf)
            except DecodeError as exc:
                self._warn("malformed", now, "ignored a malformed message from a node: %s", exc)
                continue
            nid = msg["id"]
            slot = self.slots.get(self.process_of.get(nid, ""))
            if slot is None:
                self._warn("unknown", now, "ignored a message from unknown node %.80r", nid)
                continue
            kind, pid = msg["type"], msg.get("pid")
            if kind == "ready":
                self._apply(slot, Ready(pid, nid), now)
            elif kind == "heartbeat":
                if pid == slot.pid and isinstance(msg.get("stats"), dict):
                    self.rates[nid].update(now, msg["stats"])
                self._apply(slot, Heartbeat(pid, nid), now)
            else:
                event_id, error = self._write_record(msg)
                if event_id is None:
                    self._warn(f"record:{slot.id}", now, "record from %s not journaled: %s",
                               slot.id, error)

    def _warn(self, key: str, now: float, fmt: str, *args) -> None:
        """A warning about what arrived on a socket, at most one per key every 10 s."""
        held = self._throttle(key, now)
        if held is not None:
            log.warning(fmt + (f" ({held} more like it not shown)" if held else ""), *args)

    def _write_record(self, body) -> tuple[int | None, str]:
        """Journal a node's record: (event id, "") or (None, why not)."""
        try:
            event_id = self.journal.write_record(body)
        except BadRecord as exc:      # the node sent nonsense: its problem, not the journal's
            return None, str(exc)
        except JournalError as exc:
            log.error("journal write failed: %s", exc)
            return None, f"the journal could not be written: {exc}"
        line = decision_line(body["kind"], body["id"], body["fields"])   # checked by the journal
        if line is not None:
            decisions.log(SHOWN[body["kind"]], "%s", line)
        return event_id, ""

    def _on_sync_records(self, fd: int) -> None:
        while (cmd := self.records.recv_nowait()) is not None:
            if isinstance(cmd.data, dict) and cmd.data.get("type") == "deadline":
                cmd.reply(self._on_deadline(cmd.data))
                continue
            if isinstance(cmd.data, dict) and cmd.data.get("type") == "done":
                cmd.reply(self._on_done(cmd.data))
                continue
            event_id, error = self._write_record(cmd.data)
            cmd.reply({"event_id": event_id} if error == "" else {"ok": False, "error": error})

    def _on_done(self, body: dict) -> dict:
        """A node of a process group returned by itself: stop expecting its heartbeats."""
        nid = body.get("id")
        slot = self.slots.get(self.process_of.get(nid, "")) if isinstance(nid, str) else None
        if slot is None or body.get("pid") != slot.pid or slot.pid is None:
            return {"ok": False, "error": "not a node of a running process of this graph"}
        log.info("%s: node %s is done (returned by itself); its process runs on", slot.id, nid)
        self._apply(slot, Done(slot.pid, nid), self.clock())
        return {"ok": True}

    def _on_deadline(self, body: dict) -> dict:
        """A safety-critical node's deadline (see iotrt.states): armed only for a node whose
        SPEC declares safety=True, from the process the supervisor started for it."""
        nid = body.get("id")
        slot = self.slots.get(self.process_of.get(nid, "")) if isinstance(nid, str) else None
        if slot is None or not slot.backstop:
            return {"ok": False, "error": "not a safety-critical node of this graph"}
        if body.get("pid") != slot.pid or slot.pid is None:
            return {"ok": False, "error": f"pid {body.get('pid')!r} is not {slot.id}'s process"}
        try:
            in_s = deadline_in_s(body)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        now = self.clock()
        self._apply(slot, Deadline(slot.pid, None if in_s is None else now + in_s), now)
        return {"ok": True}

    def _on_control(self, fd: int) -> None:
        until = time.monotonic() + MESSAGES_BUDGET_S
        while time.monotonic() < until:   # as _on_node_messages: the rest on the next turn
            try:
                buf = recv_bytes(self.ctl, block=False)
            except pynng.TryAgain:
                return
            # Anything local can write to this socket: a malformed request, or one whose
            # answer fails, gets an error reply, never an exception out of the loop that
            # supervises the whole graph.
            name = None
            try:
                req = unpack(buf)
                name = req.get(REQUEST_KEY) if isinstance(req, dict) else None
                handler = self._control_handlers().get(name) if isinstance(name, str) else None
                reply = pack(handler(req) if handler else {
                    "ok": False, "error": f"unknown request; known: {', '.join(self._control_handlers())}"})
            except DecodeError as exc:
                reply = pack({"ok": False, "error": f"malformed request: {exc}"})
            except Exception as exc:  # logged and answered: the loop goes on
                log.exception("control request %.40r failed", name)
                reply = pack({"ok": False, "error": f"the supervisor failed to answer: "
                                                   f"{type(exc).__name__}: {exc}"})
            try:
                self.ctl.send(reply, block=False)
            except pynng.TryAgain:
                self._warn("ctl-send", self.clock(), "control: a client is not reading its "
                           "replies; %s", "reply dropped")

    # -- control requests (see iotrt.control for the client side) ----------------------------

    def _control_handlers(self) -> dict[str, Callable[[dict], dict]]:
        return {"ps": self._ctl_ps, "topics": self._ctl_topics, "stop": self._ctl_stop,
                "reload": self._ctl_reload}

    def _ctl_ps(self, req: dict) -> dict:
        now = self.clock()
        processes = [process_row(slot, self.usage, now) for slot in self.slots.values()]
        rows = [ps_row(self.graph.nodes[nid], self.slots[self.process_of[nid]],
                       self.rates[nid], now)
                for nid in self.graph.nodes]
        return {"ok": True, "graph": self.graph.name, "pid": os.getpid(),
                "state": "stopping" if self.stopping else ("running" if self.ready_sent else "starting"),
                "uptime_s": now - self.started_at, "nodes": rows, "processes": processes,
                "supervisor": dict(zip(("cpu_pct", "rss_bytes", "pss_bytes"),
                                       self.usage.sample(os.getpid())))}

    def _ctl_topics(self, req: dict) -> dict:
        return {"ok": True, "graph": self.graph.name, "topics": topics_table(self.graph)}

    def _ctl_stop(self, req: dict) -> dict:
        self.request_stop("'iotrt down'")
        return {"ok": True, "pid": os.getpid()}

    def _ctl_reload(self, req: dict) -> dict:
        node = req.get("node")
        if node is not None and (not isinstance(node, str) or node not in self.graph.nodes):
            return {"ok": False, "error": f"no node '{node}' in graph {self.graph.name}"}
        return {"ok": True, "nodes": self._reload(node)}

    def _reload(self, node: str | None) -> list[str]:
        """SIGHUP the named node, or every node whose SPEC is `reloadable`: they re-read their
        files in place."""
        targets = [node] if node else self.graph.reloadable_nodes()
        done, signalled = [], set()
        for nid in targets:   # a process group passes SIGHUP on to each of its nodes
            pname = self.process_of[nid]
            proc = self.procs.get(pname)
            if proc is not None and self.slots[pname].state in (State.STARTING, State.RUNNING):
                if pname not in signalled:
                    proc.signal(signal.SIGHUP)
                    signalled.add(pname)
                done.append(nid)
        log.info("reload: sent SIGHUP to %s", ", ".join(done) or "no node")
        self._journal("reload", "_sup", {"nodes": done})
        return done


def run_graph(graph: Graph, log_level: str = "INFO") -> int:
    """`iotrt up`: run `graph` in this process; returns the exit code."""
    try:
        return Supervisor(graph, log_level=log_level).run()
    except SupervisorError as exc:
        log.error("%s", exc)
        return EXIT_SETUP

