"""The node state machine, driven by a fake clock: no processes, no sleeping."""

import signal

import pytest

from iotrt.states import (
    Backoff,
    Deadline,
    Exited,
    GiveUp,
    Heartbeat,
    Intensity,
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


def make(**kw) -> Slot:
    kw.setdefault("backoff", Backoff(initial_s=1.0, max_s=8.0, factor=2.0, reset_s=30.0))
    kw.setdefault("intensity", Intensity(restarts=5, window_s=100.0))
    return Slot("n", **kw)


def crash_and_wait(n: Slot, now: float, pid: int) -> float:
    """Crash the running node at `now`; return the backoff delay it was given."""
    transition(n, Exited(pid, 1), now)
    assert n.state == State.BACKOFF
    delay = n.deadline - now
    assert transition(n, TimePassed(), now + delay - 0.001) == []          # not yet
    assert transition(n, TimePassed(), now + delay) == [Spawn()]             # BACKOFF -> STARTING
    return delay


def test_start_ready_running():
    n = make()
    assert transition(n, Start(), 0.0) == [Spawn()]
    assert n.state == State.STARTING and n.deadline == 60.0
    transition(n, Spawned(10), 0.1)
    transition(n, Ready(10), 0.5)
    assert n.state == State.RUNNING and n.pid == 10 and n.deadline is None


def test_crash_loop_backs_off_exponentially_up_to_the_cap():
    n = make(intensity=Intensity(restarts=100, window_s=10.0))
    transition(n, Start(), 0.0)
    delays, now, pid = [], 0.0, 1
    for _ in range(6):
        transition(n, Spawned(pid), now)
        transition(n, Ready(pid), now)
        delays.append(crash_and_wait(n, now + 0.1, pid))
        now += 0.1 + delays[-1]
        pid += 1
    assert delays == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0, 8.0])
    assert n.restarts == 6


def test_running_healthy_long_enough_resets_the_backoff():
    n = make()
    transition(n, Start(), 0.0)
    transition(n, Spawned(1), 0.0)
    transition(n, Ready(1), 0.0)
    assert crash_and_wait(n, 1.0, 1) == pytest.approx(1.0)
    transition(n, Spawned(2), 2.0)
    transition(n, Ready(2), 2.0)
    assert crash_and_wait(n, 3.0, 2) == pytest.approx(2.0)          # crashed after 1 s: still a loop
    transition(n, Spawned(3), 5.0)
    transition(n, Heartbeat(3), 5.0)
    for t in range(6, 40):
        transition(n, Heartbeat(3), float(t))
    assert crash_and_wait(n, 40.0, 3) == pytest.approx(1.0)         # ran 35 s > reset_s: back to the start


def test_intensity_limit_gives_up():
    n = make(intensity=Intensity(restarts=3, window_s=100.0))
    transition(n, Start(), 0.0)
    now = 0.0
    for pid in range(1, 4):
        transition(n, Spawned(pid), now)
        now += crash_and_wait(n, now, pid) + 0.01
    transition(n, Spawned(4), now)
    actions = transition(n, Exited(4, 3), now)
    assert n.state == State.FAILED
    assert len(actions) == 1 and isinstance(actions[0], GiveUp)
    assert "gave up after 3 restarts in 100s" in actions[0].reason
    assert "exited with code 3" in n.reason


def test_restarts_outside_the_window_do_not_count():
    n = make(intensity=Intensity(restarts=2, window_s=10.0),
             backoff=Backoff(initial_s=0.5, max_s=0.5, factor=1.0, reset_s=1000))
    transition(n, Start(), 0.0)
    now = 0.0
    for pid in range(1, 6):          # runs 6 s, then crashes: never more than 2 in 10 s
        transition(n, Spawned(pid), now)
        transition(n, Ready(pid), now)
        now += 6.0
        transition(n, Heartbeat(pid), now)
        now += crash_and_wait(n, now, pid)
    assert n.state == State.STARTING and n.restarts == 5


def test_hung_node_is_terminated_then_killed_then_restarted():
    n = make(liveness_s=3.0, stop_grace_s=2.0)
    transition(n, Start(), 0.0)
    transition(n, Spawned(7), 0.0)
    transition(n, Ready(7), 0.0)
    transition(n, Heartbeat(7), 1.0)
    assert next_deadline(n) == 4.0
    assert transition(n, TimePassed(), 4.0) == []
    assert transition(n, TimePassed(), 4.01) == [Signal(signal.SIGTERM)]      # RUNNING -> STOPPING
    assert n.state == State.STOPPING and "no heartbeat" in n.reason
    assert transition(n, TimePassed(), 5.0) == []
    assert transition(n, TimePassed(), 6.01) == [Signal(signal.SIGKILL)]
    assert transition(n, TimePassed(), 7.0) == []                            # SIGKILL sent once
    transition(n, Exited(7, -signal.SIGKILL), 7.1)
    assert n.state == State.BACKOFF and "no heartbeat" in n.reason


def test_start_timeout_is_separate_from_liveness():
    n = make(start_timeout_s=20.0, liveness_s=1.0)
    transition(n, Start(), 0.0)
    transition(n, Spawned(3), 0.0)
    assert transition(n, TimePassed(), 19.0) == []       # slow model load: no heartbeat needed yet
    assert transition(n, TimePassed(), 20.0) == [Signal(signal.SIGTERM)]
    assert "not ready within 20s" in n.reason


def test_stop_from_every_state():
    n = make()
    transition(n, Start(), 0.0)
    transition(n, Spawned(5), 0.0)
    transition(n, Ready(5), 0.0)
    assert transition(n, Stop(), 1.0) == [Signal(signal.SIGTERM)]
    transition(n, Exited(5, 0), 1.5)
    assert n.state == State.STOPPED and n.pid is None

    b = make()
    transition(b, Start(), 0.0)
    transition(b, Spawned(6), 0.0)
    transition(b, Exited(6, 1), 0.5)
    assert b.state == State.BACKOFF
    assert transition(b, Stop(), 0.6) == []
    assert b.state == State.STOPPED
    assert transition(b, TimePassed(), 100.0) == []      # no restart after a stop


def test_restart_policies_on_clean_and_failed_exits():
    def end(policy, code):
        n = make(restart=policy)
        transition(n, Start(), 0.0)
        transition(n, Spawned(1), 0.0)
        transition(n, Ready(1), 0.0)
        return transition(n, Exited(1, code), 1.0), n.state

    assert end("on-failure", 0) == ([], State.EXITED)
    assert end("on-failure", 2) == ([], State.BACKOFF)
    assert end("on-failure", -9) == ([], State.BACKOFF)
    assert end("always", 0) == ([], State.BACKOFF)
    assert end("never", 0) == ([], State.EXITED)
    actions, state = end("never", 1)
    assert state == State.FAILED and isinstance(actions[0], GiveUp)


def test_messages_from_an_earlier_process_are_ignored():
    n = make()
    transition(n, Start(), 0.0)
    transition(n, Spawned(1), 0.0)
    transition(n, Exited(1, 1), 0.1)
    transition(n, TimePassed(), 5.0)
    transition(n, Spawned(2), 5.0)
    transition(n, Ready(1), 5.1)                   # late, from pid 1
    assert n.state == State.STARTING
    transition(n, Exited(1, 1), 5.2)               # duplicate exit of pid 1
    assert n.state == State.STARTING


def test_spawn_failure_backs_off():
    n = make()
    transition(n, Start(), 0.0)
    transition(n, SpawnFailed("ENOMEM"), 0.0)
    assert n.state == State.BACKOFF and "could not start: ENOMEM" in n.reason


def test_health_for_the_watchdog():
    crit, other = make(critical=True), make(critical=False)
    for n in (crit, other):
        transition(n, Start(), 0.0)
        transition(n, Spawned(1), 0.0)
        transition(n, Ready(1), 0.0)
        transition(n, Exited(1, 1), 10.0)
    assert crit.healthy(12.0, critical_down_s=5.0)
    assert not crit.healthy(15.1, critical_down_s=5.0)     # down past its limit
    assert other.healthy(1000.0, critical_down_s=5.0)      # non-critical never blocks
    transition(crit, TimePassed(), 20.0)
    transition(crit, Spawned(2), 20.0)
    transition(crit, Ready(2), 20.0)
    assert crit.healthy(21.0, critical_down_s=5.0)


def test_backoff_of_a_node_crash_looping_for_days_stays_at_the_cap():
    slot = Slot("n", backoff=Backoff(initial_s=0.5, max_s=30.0, factor=2.0))
    slot.failures = 100_000
    assert slot.backoff_delay() == 30.0


def test_missed_safety_deadline_kills_at_once_and_restarts():
    n = make(backstop=True)
    transition(n, Start(), 0.0)
    transition(n, Spawned(5), 0.0)
    transition(n, Ready(5), 0.0)
    transition(n, Deadline(5, 10.0), 5.0)              # "re-locked by t=10"
    transition(n, Heartbeat(5), 9.0)
    assert next_deadline(n) == 10.5
    assert transition(n, TimePassed(), 10.4) == []
    assert transition(n, TimePassed(), 10.5) == [Signal(signal.SIGKILL)]   # no SIGTERM, no grace
    assert n.state == State.STOPPING and "safety deadline" in n.reason
    transition(n, Exited(5, -signal.SIGKILL), 10.6)
    assert n.state == State.BACKOFF


def test_a_cleared_or_foreign_safety_deadline_does_nothing():
    n = make(backstop=True)
    transition(n, Start(), 0.0)
    transition(n, Spawned(5), 0.0)
    transition(n, Ready(5), 0.0)
    transition(n, Deadline(5, 2.0), 1.0)
    transition(n, Deadline(5, None), 2.0)              # re-locked in time
    transition(n, Deadline(4, 3.0), 2.0)               # an earlier incarnation's: ignored
    transition(n, Heartbeat(5), 4.0)
    assert transition(n, TimePassed(), 4.0) == [] and n.state == State.RUNNING
    plain = make()                                     # no SPEC safety flag: never enforced
    transition(plain, Start(), 0.0)
    transition(plain, Spawned(6), 0.0)
    transition(plain, Deadline(6, 1.0), 0.0)
    assert plain.safety_deadline is None
