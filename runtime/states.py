"""The supervisor's per-process state machine, free of processes and clocks.

A `Slot` is one OS process: a node alone, or the nodes of a process group (`members`); the
process is the unit of start, restart and backoff, while readiness and heartbeat liveness are
per node, so one hung node in a group is found (and its whole process restarted).
`transition(slot, event, now)` moves one `Slot` to its next state and returns the
actions the supervisor must carry out (spawn, signal, give up). It does no I/O and reads no
clock, so every path (backoff growth, intensity limit, hung node, stop grace) is tested with a
fake time in microseconds of test time.

    STOPPED --Start--> STARTING --Ready--> RUNNING
    STARTING/RUNNING --exit, hang, start timeout--> (STOPPING -->) BACKOFF --delay--> STARTING
    BACKOFF --too many restarts--> FAILED          any --Stop--> STOPPING --exit--> STOPPED
    STARTING/RUNNING --safety deadline passed--> STOPPING (SIGKILL at once) --exit--> BACKOFF

A safety deadline is the backstop of a safety-critical node (SPEC `safety=True`, e.g. the door
lock): before it starts an action that must end by itself (an unlock), the node reports when it
will have ended it; if it has not cleared the deadline `BACKSTOP_GRACE_S` after that (frozen by
SIGSTOP, stuck in a driver), the supervisor SIGKILLs its process: the kernel releases the GPIO
line (wired so that released = locked) and the restarted node starts in its safe state.
"""

from __future__ import annotations

import signal
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

# Supervision policy (the graph's `supervisor:` section and each node's `restart:`): the
# state machine's own types, which the graph model reads into.
RESTART_POLICIES = ("never", "on-failure", "always")


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5     # delay before the first restart
    max_s: float = 30.0        # the cap; systemd's WatchdogSec must stay above it
    factor: float = 2.0        # each consecutive failure multiplies the delay
    reset_s: float = 30.0      # running healthy this long forgets earlier failures


@dataclass(frozen=True)
class Intensity:
    restarts: int = 5          # more than this many restarts ...
    window_s: float = 60.0     # ... within this window: give up on the node


@dataclass(frozen=True)
class Policy:
    """Graph-wide supervision settings (the graph's `supervisor:` section)."""

    heartbeat_s: float = 1.0        # nodes heartbeat this often
    liveness_s: float = 5.0         # no heartbeat for this long: the node is hung, restart it
    start_timeout_s: float = 60.0   # spawn to `ready`: a first model compile on a slow board counts
    stop_grace_s: float = 5.0       # SIGTERM to SIGKILL
    critical_down_s: float = 60.0   # a critical node down this long stops the systemd watchdog
    backoff: Backoff = field(default_factory=Backoff)
    intensity: Intensity = field(default_factory=Intensity)


class State(str, Enum):
    STOPPED = "stopped"      # not started yet, or stopped on request
    STARTING = "starting"    # spawned, waiting for its `ready`
    RUNNING = "running"      # ready and heartbeating
    BACKOFF = "backoff"      # ended unexpectedly; waiting to be restarted
    STOPPING = "stopping"    # SIGTERM sent; SIGKILL when the grace period ends
    EXITED = "exited"        # ended and its restart policy keeps it down
    FAILED = "failed"        # given up on: restart intensity exceeded, or failed with restart: never


ALIVE = (State.STARTING, State.RUNNING, State.STOPPING)
BACKSTOP_GRACE_S = 0.5       # a safety deadline missed by this much: SIGKILL
DONE = (State.STOPPED, State.EXITED, State.FAILED)


# -- events (what happened) -------------------------------------------------------------------

@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Spawned:
    pid: int


@dataclass(frozen=True)
class SpawnFailed:
    error: str


@dataclass(frozen=True)
class Ready:
    pid: int
    node: str = ""           # the member that is ready ("": the slot's only node)


@dataclass(frozen=True)
class Heartbeat:
    pid: int
    node: str = ""


@dataclass(frozen=True)
class Done:
    """A node of the process returned by itself; the others run on."""
    pid: int
    node: str


@dataclass(frozen=True)
class Exited:
    pid: int
    returncode: int          # negative: killed by that signal (subprocess convention)


@dataclass(frozen=True)
class Deadline:
    """The node's safety action will have ended by `at` (None: it has ended, nothing pending)."""
    pid: int
    at: float | None


@dataclass(frozen=True)
class TimePassed:
    """Time passed; deadlines (start timeout, liveness, grace, backoff) are checked."""


# What can happen to a slot (the node's own Event, the journal's entries are other things)
SlotEvent = (Start | Stop | Spawned | SpawnFailed | Ready | Heartbeat | Done | Exited | Deadline
             | TimePassed)


# -- actions (what the supervisor must do) ----------------------------------------------------

@dataclass(frozen=True)
class Spawn:
    pass


@dataclass(frozen=True)
class Signal:
    signum: int


@dataclass(frozen=True)
class GiveUp:
    reason: str


Action = Spawn | Signal | GiveUp


@dataclass
class Slot:
    """One node's supervision record: its policy and where it is now."""

    id: str
    restart: str = "on-failure"
    critical: bool = True
    start_timeout_s: float = 60.0
    liveness_s: float = 5.0
    stop_grace_s: float = 5.0
    backoff: Backoff = field(default_factory=Backoff)
    intensity: Intensity = field(default_factory=Intensity)

    state: State = State.STOPPED
    since: float = 0.0               # when `state` was entered
    reason: str = ""                 # why the last transition happened (shown by `iotrt ps`)
    pid: int | None = None
    wanted: bool = False             # the supervisor wants it up (False after Stop)
    deadline: float | None = None    # start timeout, stop grace or end of backoff
    last_heartbeat: float = 0.0
    running_since: float | None = None
    down_since: float | None = None  # left RUNNING (or never reached it) at this time
    killed: bool = False             # SIGKILL already sent in this STOPPING
    restarts: int = 0                # total restarts since the supervisor started
    failures: int = 0                # consecutive failures: the backoff exponent
    # restarts on the "active clock" (time minus time spent waiting in backoff): a crash loop
    # whose backoff grows must still hit the intensity limit, however long its waits get
    restart_times: deque = field(default_factory=deque)
    backoff_waited: float = 0.0      # total seconds spent in BACKOFF
    returncode: int | None = None
    members: tuple[str, ...] = ()    # the nodes this process runs (default: just `id`)
    beats: dict = field(default_factory=dict)   # member -> its last ready/heartbeat time
    done: set = field(default_factory=set)      # members that returned by themselves
    backstop: bool = False           # its safety deadlines are enforced (SPEC safety=True)
    safety_deadline: float | None = None

    def __post_init__(self) -> None:
        self.members = self.members or (self.id,)

    def silent(self) -> tuple[str, float]:
        """(the member heard from longest ago, when): liveness is as good as the worst node."""
        live = [m for m in self.members if m not in self.done] or list(self.members)
        node = min(live, key=lambda m: self.beats.get(m, 0.0))
        return node, self.beats.get(node, float("inf") if node in self.done else 0.0)

    def backoff_delay(self) -> float:
        b = self.backoff
        # the exponent is capped: a node crash-looping for hours must not overflow the float
        return min(b.max_s, b.initial_s * b.factor ** min(max(0, self.failures - 1), 64))

    def healthy(self, now: float, critical_down_s: float) -> bool:
        """False once a critical node has been down longer than `critical_down_s` (this stops
        the systemd watchdog); a non-critical node never makes the graph unhealthy."""
        if not self.critical or self.state == State.RUNNING or self.down_since is None:
            return True
        return now - self.down_since <= critical_down_s


def transition(n: Slot, event: SlotEvent, now: float) -> list[Action]:
    """Apply `event` to `n` at time `now`; return the actions to carry out."""
    s = n.state
    if isinstance(event, Start):
        n.wanted = True
        if s in (State.STOPPED, State.EXITED, State.FAILED):
            # STOPPED/EXITED/FAILED -> STARTING
            n.failures = 0    # the first start is governed by start_timeout_s, not down_since
            return _start(n, now, "started")
        return []

    if isinstance(event, Stop):
        n.wanted = False
        if s in (State.STARTING, State.RUNNING):
            # STARTING/RUNNING -> STOPPING
            return _stop(n, now, "stop requested")
        if s == State.BACKOFF:
            # BACKOFF -> STOPPED (nothing is running)
            n.backoff_waited += now - n.since
            _enter(n, State.STOPPED, now, "stop requested")
            n.deadline = None
        return []

    if isinstance(event, Spawned):
        if s == State.STARTING:
            n.pid = event.pid
        return []

    if isinstance(event, SpawnFailed):
        if s == State.STARTING:
            # STARTING -> BACKOFF or FAILED
            return _after_failure(n, now, f"could not start: {event.error}")
        return []

    if isinstance(event, (Ready, Heartbeat, Done)):
        if event.pid != n.pid:      # a late message from an earlier incarnation
            return []
        member = event.node or n.members[0]
        if member not in n.members:
            return []
        n.beats[member] = now
        if isinstance(event, Done):
            n.done.add(member)      # no more heartbeats expected from it
        n.last_heartbeat = n.silent()[1] if len(n.members) > 1 else now
        if s == State.STARTING and len(n.beats) < len(n.members):
            return []               # a group is ready once every node in it is
        if s == State.STARTING:
            # STARTING -> RUNNING (a heartbeat implies the node got past its start-up)
            _enter(n, State.RUNNING, now, "ready")
            n.running_since = now
            n.down_since = None
            n.deadline = None
        return []

    if isinstance(event, Deadline):
        if event.pid == n.pid and n.backstop and s in (State.STARTING, State.RUNNING):
            n.safety_deadline = event.at
        return []

    if isinstance(event, Exited):
        if event.pid != n.pid or s not in ALIVE:
            return []
        n.pid = None
        n.returncode = event.returncode
        how = _describe_exit(event.returncode)
        if s == State.STARTING:
            how += " before it was ready"
        if s == State.STOPPING and not n.wanted:
            # STOPPING -> STOPPED
            _enter(n, State.STOPPED, now, how)
            n.deadline = None
            return []
        if s == State.STOPPING:
            # STOPPING -> BACKOFF or FAILED (stopped for hanging; n.reason says why)
            return _after_failure(n, now, f"{n.reason}, {how}")
        failed = event.returncode != 0
        if not failed and n.restart != "always":
            # STARTING/RUNNING -> EXITED (a clean exit that the policy does not restart)
            _exited(n, State.EXITED, now, how)
            return []
        if failed and n.restart == "never":
            # STARTING/RUNNING -> FAILED
            _exited(n, State.FAILED, now, f"{how}; restart: never")
            return [GiveUp(f"{n.id} {how} (restart: never)")]
        # STARTING/RUNNING -> BACKOFF or FAILED
        return _after_failure(n, now, how)

    if isinstance(event, TimePassed):
        if (s in ALIVE and not n.killed and n.safety_deadline is not None
                and now >= n.safety_deadline + BACKSTOP_GRACE_S):
            # STARTING/RUNNING/STOPPING -> STOPPING (safety deadline missed: SIGKILL at once)
            if s == State.RUNNING:
                n.down_since = now
            _enter(n, State.STOPPING, now, f"missed its safety deadline by "
                                           f"{now - n.safety_deadline:.2g}s: killed")
            n.killed = True
            n.deadline = None
            n.safety_deadline = None
            return [Signal(signal.SIGKILL)]
        if s == State.STARTING and n.deadline is not None and now >= n.deadline:
            # STARTING -> STOPPING (start timeout; restarted once it is gone)
            return _stop(n, now, f"not ready within {n.start_timeout_s:g}s "
                                 "(if it needs longer, raise its start_timeout_s)")
        if s == State.RUNNING and now - n.last_heartbeat > n.liveness_s:
            # RUNNING -> STOPPING (hung: its event loop stopped heartbeating)
            who = f" from node {n.silent()[0]}" if len(n.members) > 1 else ""
            return _stop(n, now, f"no heartbeat{who} for {n.liveness_s:g}s")
        if s == State.STOPPING and not n.killed and n.deadline is not None and now >= n.deadline:
            # STOPPING -> STOPPING (grace period over: SIGKILL)
            n.killed = True
            n.deadline = None
            return [Signal(signal.SIGKILL)]
        if s == State.BACKOFF and n.deadline is not None and now >= n.deadline:
            # BACKOFF -> STARTING
            n.backoff_waited += now - n.since
            n.restarts += 1
            return _start(n, now, f"restart #{n.restarts}")
        return []
    raise TypeError(f"not a state machine event: {event!r}")


def next_deadline(n: Slot) -> float | None:
    """The earliest time at which TimePassed can change `n`: the supervisor loop's select()
    timeout."""
    due = n.last_heartbeat + n.liveness_s if n.state == State.RUNNING else n.deadline
    if n.safety_deadline is not None and not n.killed:
        backstop = n.safety_deadline + BACKSTOP_GRACE_S
        due = backstop if due is None else min(due, backstop)
    return due


def _enter(n: Slot, state: State, now: float, reason: str) -> None:
    n.state = state
    n.since = now
    n.reason = reason


def _start(n: Slot, now: float, reason: str) -> list[Action]:
    _enter(n, State.STARTING, now, reason)
    n.pid = None
    n.killed = False
    n.running_since = None
    n.safety_deadline = None
    n.beats = {}
    n.done = set()
    n.deadline = now + n.start_timeout_s
    return [Spawn()]


def _stop(n: Slot, now: float, reason: str) -> list[Action]:
    if n.state == State.RUNNING:
        n.down_since = now
    _enter(n, State.STOPPING, now, reason)
    n.killed = False
    n.deadline = now + n.stop_grace_s
    return [Signal(signal.SIGTERM)]


def _exited(n: Slot, state: State, now: float, reason: str) -> None:
    if n.running_since is not None and n.down_since is None:
        n.down_since = now
    _enter(n, state, now, reason)
    n.deadline = None


def _after_failure(n: Slot, now: float, reason: str) -> list[Action]:
    if n.running_since is not None and now - n.running_since >= n.backoff.reset_s:
        n.failures = 0      # it ran healthy long enough: this is a new failure, not a loop
    if n.down_since is None:
        n.down_since = now
    n.failures += 1
    # The window is measured on the active clock: time spent waiting in backoff does not age
    # earlier restarts, so "N restarts in T seconds" means T seconds of trying to run. With
    # wall time, a node whose backoff grew past T/N would never reach the limit.
    window, active = n.intensity.window_s, now - n.backoff_waited
    while n.restart_times and active - n.restart_times[0] > window:
        n.restart_times.popleft()
    if len(n.restart_times) >= n.intensity.restarts:
        # -> FAILED (restart intensity exceeded)
        why = (f"{reason}; gave up after {len(n.restart_times)} restarts in {window:g}s "
               f"(not counting backoff waits)")
        _exited(n, State.FAILED, now, why)
        return [GiveUp(f"{n.id}: {why}")]
    n.restart_times.append(active)
    delay = n.backoff_delay()
    # -> BACKOFF
    _enter(n, State.BACKOFF, now, f"{reason}; restarting in {delay:.2g}s")
    n.deadline = now + delay
    n.running_since = None
    return []


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"
