"""Property tests (hypothesis) of the engine's timing semantics, against independent
characterisations rather than a copy of the implementation."""

from __future__ import annotations

import itertools

from hypothesis import example, given, settings
from hypothesis import strategies as st

from iotrt.rules import Fired, SendCommand

# A message stream: (gap since the previous message in seconds, condition value).
STREAM = st.lists(st.tuples(st.floats(0.01, 5.0), st.booleans()), max_size=40)
SETTINGS = settings(max_examples=150, deadline=None)


def _times(stream):
    return list(itertools.accumulate(gap for gap, _ in stream))


def _true_runs(stream):
    """Maximal runs of consecutive true evaluations: (first index, last index)."""
    runs, start = [], None
    for i, (_, ok) in enumerate(stream):
        if ok and start is None:
            start = i
        if not ok and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(stream) - 1))
    return runs


def _rule(driver, extra):
    return driver(f"""
        rules:
          - id: r
            trigger: m
            condition: msg.ok
            {extra}
            actions: [{{log: x}}]
    """)


def _feed(d, stream, until_extra=0.0):
    times = _times(stream)
    for t, (_, ok) in zip(times, stream):
        d.at(t, "m", {"ok": ok})
    d.at((times[-1] if times else 0) + until_extra)
    return times


@SETTINGS
@given(STREAM, st.integers(1, 4))
def test_edge_with_count_fires_once_per_long_enough_true_run(driver, stream, n):
    d = _rule(driver, f"for: {{count: {n}}}")
    times = _feed(d, stream)
    expected = [times[a + n - 1] for a, b in _true_runs(stream) if b - a + 1 >= n]
    assert d.fired() == expected


@SETTINGS
@given(STREAM, st.integers(1, 4))
def test_level_with_count_fires_every_n_trues(driver, stream, n):
    d = _rule(driver, f"for: {{count: {n}}}\n            edge: false")
    times = _feed(d, stream)
    expected = [times[a + k * n - 1] for a, b in _true_runs(stream)
                for k in range(1, (b - a + 1) // n + 1)]
    assert d.fired() == expected


@SETTINGS
@given(STREAM, st.floats(0.1, 10.0))
def test_cooldown_spacing_and_edge_rearm(driver, stream, cooldown):
    d = _rule(driver, f"cooldown: {cooldown}")
    times = _feed(d, stream)
    fired = d.fired()
    for a, b in zip(fired, fired[1:]):
        assert b - a >= cooldown - 1e-9
        # edge: a false evaluation lies between two firings
        assert any(not ok for t, (_, ok) in zip(times, stream) if a < t < b)
    # and nothing is lost: a true run starting after the cooldown fires at its start
    for start, _ in _true_runs(stream):
        t = times[start]
        if all(t - f >= cooldown for f in fired if f < t):
            assert t in fired


@SETTINGS
@given(STREAM, st.floats(0.1, 8.0))
def test_duration_hold_fires_exactly_d_after_a_run_starts_if_it_lasts(driver, stream, hold):
    d = _rule(driver, f"for: {hold}")
    times = _feed(d, stream, until_extra=hold + 1)
    expected = []
    for a, b in _true_runs(stream):
        ends = times[b + 1] if b + 1 < len(stream) else float("inf")  # first false after run
        if times[a] + hold < ends:  # a false message at exactly start+hold comes first
            expected.append(times[a] + hold)
    assert d.fired() == expected


@SETTINGS
@given(st.lists(st.floats(0.01, 10.0), max_size=30), st.floats(0.5, 6.0))
# One ulp after the deadline: the engine fires at 0.5 and again 0.5 s after the message (an
# earlier model, `e - s >= t + 1e-6`, wrongly expected one firing).
@example(gaps=[0.5000000000000001], t_absent=0.5)
@example(gaps=[0.5], t_absent=0.5)  # exactly at the deadline: the message re-arms it first
@example(gaps=[0.49999999999999994], t_absent=0.5)
def test_absent_fires_once_per_gap_at_last_message_plus_t(driver, gaps, t_absent):
    d = driver(f"""
        rules:
          - {{id: quiet, trigger: {{absent: m, for: {t_absent}}}, actions: [{{log: x}}]}}
    """)
    d.at(0.0)
    times = list(itertools.accumulate(gaps))
    for t in times:
        d.at(t, "m", {})
    horizon = (times[-1] if times else 0.0) + t_absent + 1
    d.at(horizon)
    starts = [0.0] + times
    ends = times + [horizon]
    # silent for t_absent before the next message (a message at exactly that moment re-arms it)
    expected = [s + t_absent for s, e in zip(starts, ends) if s + t_absent < e]
    fired = d.fired()
    assert len(fired) == len(expected)
    assert all(abs(a - b) < 1e-6 for a, b in zip(fired, expected))


MODE = """
    rules:
      - id: r
        trigger: m
        mode: {mode}
        max: {max}
        actions:
          - command: c
            args: {{n: "${{msg.n}}", step: 1}}
          - delay: {delay}
          - command: c
            args: {{n: "${{msg.n}}", step: 2}}
"""
TRIGGERS = st.lists(st.floats(0.01, 3.0), min_size=1, max_size=25)


def _mode_run(driver, mode, limit, delay, gaps):
    d = driver(MODE.format(mode=mode, max=limit, delay=delay))
    times = list(itertools.accumulate(gaps))
    for n, t in enumerate(times):
        d.at(t, "m", {"n": n})
    d.at(times[-1] + delay * (limit + 2) + 1)
    starts = {c["n"]: t for t, c in d.commands() if c["step"] == 1}
    ends = {c["n"]: t for t, c in d.commands() if c["step"] == 2}
    return d, times, starts, ends


def _max_overlap(starts, ends):
    events = sorted([(t, 1) for t in starts.values()] + [(t, -1) for t in ends.values()],
                    key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@SETTINGS
@given(st.sampled_from(["single", "parallel", "queued"]), st.integers(1, 3),
       st.floats(0.5, 4.0), TRIGGERS)
def test_modes_bound_concurrency_and_finish_every_started_run(driver, mode, limit, delay, gaps):
    d, times, starts, ends = _mode_run(driver, mode, limit, delay, gaps)
    assert set(starts) == set(ends)  # nothing cancelled in these modes
    for n in starts:
        assert abs(ends[n] - starts[n] - delay) < 1e-6
    allowed = limit if mode == "parallel" else 1
    assert _max_overlap(starts, ends) <= allowed
    fired = sum(isinstance(a, Fired) for _, a in d.log)
    assert fired == len(starts)
    if mode == "queued":
        order = sorted(starts, key=lambda n: starts[n])
        assert order == sorted(order)  # first in, first out
        for n in starts:
            assert starts[n] >= times[n] - 1e-9
    else:
        for n in starts:
            assert starts[n] == times[n]  # started at once or not at all


@SETTINGS
@given(st.floats(0.5, 4.0), TRIGGERS)
def test_restart_mode_completes_only_runs_not_interrupted(driver, delay, gaps):
    d, times, starts, ends = _mode_run(driver, "restart", 1, delay, gaps)
    assert set(starts) == set(range(len(times)))  # every trigger starts a run
    for n, t in enumerate(times):
        nxt = times[n + 1] if n + 1 < len(times) else float("inf")
        # a run resumes before a message that arrives at the same moment is handled
        assert (n in ends) == (t + delay <= nxt + 1e-9)
    assert all(isinstance(a, SendCommand) for _, a in d.log if not isinstance(a, Fired))


@SETTINGS
@given(st.lists(st.floats(1.0, 40_000.0), min_size=1, max_size=12), st.integers(0, 86_399))
def test_time_of_day_fires_once_per_occurrence_however_sparse_the_ticks(driver, gaps, second):
    at = f"{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
    d = driver(f"""
        rules:
          - {{id: daily, trigger: {{at: "{at}"}}, actions: [{{log: x}}]}}
    """)
    d.tick(0.0)
    times = list(itertools.accumulate(gaps))
    for t in times:
        d.tick(t)  # no tick at the due time: each gap (< 1 day) holds at most one occurrence
    # the wall clock starts at 12:00:00 (see conftest); count occurrences of `at` in (0, end]
    start = 12 * 3600
    first = (second - start) % 86_400 or 86_400
    expected = 0 if first > times[-1] else 1 + int((times[-1] - first) // 86_400)
    assert len(d.fired()) == expected


@SETTINGS
@given(st.floats(0.5, 30.0), st.floats(1.0, 300.0))
def test_interval_fires_floor_of_elapsed_over_period(driver, period, end):
    d = driver(f"""
        rules:
          - {{id: tick, trigger: {{interval: {period}}}, actions: [{{log: x}}]}}
    """)
    d.at(0.0)
    d.at(end)
    fired = d.fired()
    assert len(fired) == int(end / period + 1e-9)
    assert all(abs(t - (k + 1) * period) < 1e-6 for k, t in enumerate(fired))
