"""The engine's semantics with a fake clock: triggers, edge, holds, cooldown, modes, runs."""

from __future__ import annotations

import datetime as dt
import textwrap

import pytest

from iotrt.rules import TICK, Engine, Log, Message, Publish, RuleError, RulesError, SendCommand, Skipped, loads_rules

OK = {"ok": True}
NOT = {"ok": False}


def test_message_trigger_without_condition_fires_on_every_message(driver):
    d = driver("""
        rules:
          - id: r
            trigger: {message: m}
            actions: [{publish: out, data: {n: "${msg.n}"}}]
    """)
    for i in range(3):
        d.at(i, "m", {"n": i})
    d.at(3, "other", {"n": 9})
    assert d.fired("r") == [0, 1, 2]
    assert [a.data for _, a in d.log if isinstance(a, Publish)] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_condition_fires_on_the_edge_and_rearms_when_false(driver):
    d = driver("""
        rules:
          - id: r
            trigger: m
            condition: msg.ok
            actions: [{command: lock, args: {action: unlock}}]
    """)
    for t, data in enumerate([OK, OK, OK, NOT, OK, OK]):
        d.at(t, "m", data)
    assert d.fired("r") == [0, 4]


def test_edge_false_fires_on_the_level(driver):
    d = driver("""
        rules:
          - {id: r, trigger: m, condition: msg.ok, edge: false, actions: [{log: hi}]}
    """)
    for t, data in enumerate([OK, OK, NOT, OK]):
        d.at(t, "m", data)
    assert d.fired("r") == [0, 1, 3]


def test_threshold_fires_when_crossing_into_range_only(driver):
    d = driver("""
        rules:
          - id: near
            trigger: {threshold: range, value: msg.distance, below: 0.3}
            actions: [{publish: stop, data: {d: "${trigger.value}"}}]
    """)
    for t, dist in enumerate([0.5, 0.2, 0.1, 0.25, 0.4, 0.35, 0.29]):
        d.at(t, "range", {"distance": dist})
    assert d.fired("near") == [1, 6]
    assert [a.data for _, a in d.log if isinstance(a, Publish)] == [{"d": 0.2}, {"d": 0.29}]


def test_threshold_band_and_first_value_inside_fires(driver):
    d = driver("""
        rules:
          - {id: band, trigger: {threshold: t, value: msg, above: 20, below: 30}, actions: [{log: x}]}
    """)
    for t, v in enumerate([25, 26, 31, 29, 10, 21]):
        d.at(t, "t", v)
    assert d.fired("band") == [0, 3, 5]


def test_threshold_value_error_is_reported_and_other_rules_go_on(driver):
    d = driver("""
        rules:
          - {id: bad, trigger: {threshold: t, value: msg.missing, above: 1}, actions: [{log: x}]}
          - {id: good, trigger: t, actions: [{log: y}]}
    """)
    out = d.at(0, "t", {"v": 3})
    assert [a.rule for a in out if isinstance(a, RuleError)] == ["bad"]
    assert d.fired() == [0] and d.fired("good") == [0]


def test_absent_fires_once_per_silence_and_rearms_on_message(driver):
    d = driver("""
        rules:
          - {id: quiet, trigger: {absent: cam, for: 5s}, actions: [{log: "camera silent"}]}
    """)
    d.at(0, "cam", {})
    d.at(4.9)
    assert d.fired() == []
    d.at(6.0)
    assert d.fired() == [5.0]  # ticked exactly at the due time
    d.at(20.0)
    assert d.fired() == [5.0]  # once per silence, not every tick
    d.at(21.0, "cam", {})
    d.at(30.0)
    assert d.fired() == [5.0, 26.0]


def test_absent_counts_from_start_when_never_seen(driver):
    d = driver("""
        rules:
          - {id: quiet, trigger: {absent: cam, for: 3s}, actions: [{log: x}]}
    """)
    d.at(0)
    d.at(10)
    assert d.fired() == [3.0]


def test_interval_fires_periodically_and_missed_slots_fire_once(driver):
    d = driver("""
        rules:
          - {id: every, trigger: {interval: 10s}, actions: [{log: x}]}
    """)
    d.at(0)
    d.at(35)
    assert d.fired() == [10, 20, 30]
    # A stalled caller (no ticks for 100 s) gets one catch-up firing, then the period resumes.
    d.engine.handle(TICK, 135.0, d.wall0)
    d.t = 135.0
    d.log.append((135.0, None))
    assert d.engine.next_due() == 140.0


def test_time_of_day_fires_once_when_the_wall_clock_passes(driver):
    d = driver("""
        rules:
          - {id: morning, trigger: {at: "12:00:30"}, actions: [{log: x}]}
    """, wall=dt.datetime(2026, 1, 5, 12, 0, 0))
    d.at(0)
    d.at(29)
    assert d.fired() == []
    d.at(31)
    assert d.fired() == [30.0]
    d.at(3600)
    d.at(86400 + 31)
    assert d.fired() == [30.0, 86430.0]


def test_time_of_day_unquoted_is_a_time_and_a_bad_one_is_a_clear_error():
    import pytest

    from iotrt.rules import RulesError
    rules = loads_rules("rules:\n  - id: r\n    trigger: {at: 07:30}\n    actions: [{log: x}]\n")
    assert rules.rules[0].triggers[0].at == dt.time(7, 30)  # not YAML 1.1's base-60 450
    with pytest.raises(RulesError, match=r"test.rules.yaml:3: expected a time of day"):
        loads_rules("rules:\n  - id: r\n    trigger: {at: 730}\n    actions: [{log: x}]\n",
                    "test.rules.yaml")


def test_hold_duration_needs_the_condition_true_throughout(driver):
    d = driver("""
        rules:
          - {id: r, trigger: m, condition: msg.ok, for: 2s, actions: [{log: x}]}
    """)
    d.at(0, "m", OK)
    d.at(1, "m", OK)
    d.at(1.5, "m", NOT)  # interrupted: starts over
    d.at(2, "m", OK)
    d.at(3.9)
    assert d.fired() == []
    d.at(10)
    assert d.fired() == [4.0]  # fires on the tick 2 s after the condition became true again


def test_hold_count_needs_consecutive_trues(driver):
    d = driver("""
        rules:
          - {id: r, trigger: m, condition: msg.ok, for: {count: 3}, actions: [{log: x}]}
    """)
    for t, data in enumerate([OK, OK, NOT, OK, OK, OK, OK, NOT, OK, OK, OK]):
        d.at(t, "m", data)
    assert d.fired() == [5, 10]


def test_cooldown_spaces_firings_and_reports_skips(driver):
    d = driver("""
        rules:
          - {id: r, trigger: m, cooldown: 10s, actions: [{log: x}]}
    """)
    for t in (0, 3, 9.99, 10, 15, 21):
        d.at(t, "m", {})
    assert d.fired() == [0, 10, 21]
    assert sum(isinstance(a, Skipped) and "cooldown" in a.reason for _, a in d.log) == 3


def test_cooldown_uses_the_monotonic_clock_not_the_wall_clock():
    engine = Engine(loads_rules("rules: [{id: r, trigger: m, cooldown: 10s, actions: [{log: x}]}]"))
    wall = dt.datetime(2026, 1, 5, 12, 0)
    engine.handle(Message("m", {}), 100.0, wall)
    # The wall clock jumps back an hour (NTP), the monotonic clock moves 1 s: still cooling down.
    out = engine.handle(Message("m", {}), 101.0, wall - dt.timedelta(hours=1))
    assert any(isinstance(a, Skipped) for a in out)
    out = engine.handle(Message("m", {}), 110.0, wall - dt.timedelta(hours=1))
    assert not any(isinstance(a, Skipped) for a in out)


MODE_RULE = """
    rules:
      - id: r
        trigger: m
        mode: {mode}
        max: 2
        actions:
          - command: lock
            args: {{n: "${{msg.n}}", step: 1}}
          - delay: 5s
          - command: lock
            args: {{n: "${{msg.n}}", step: 2}}
"""


def _run_mode(driver, mode):
    d = driver(MODE_RULE.format(mode=mode))
    for t in (0, 1, 2):
        d.at(t, "m", {"n": t})
    d.at(30)
    return d, [(t, c["n"], c["step"]) for t, c in d.commands()]


def test_mode_single_ignores_triggers_while_running(driver):
    d, cmds = _run_mode(driver, "single")
    assert cmds == [(0, 0, 1), (5, 0, 2)]
    assert sum(isinstance(a, Skipped) for _, a in d.log) == 2


def test_mode_restart_cancels_the_running_sequence(driver):
    _, cmds = _run_mode(driver, "restart")
    assert cmds == [(0, 0, 1), (1, 1, 1), (2, 2, 1), (7, 2, 2)]


def test_mode_queued_runs_one_after_another_up_to_max(driver):
    d, cmds = _run_mode(driver, "queued")
    assert cmds == [(0, 0, 1), (5, 0, 2), (5, 1, 1), (10, 1, 2)]
    assert [a.reason for _, a in d.log if isinstance(a, Skipped)] == ["queue full (max 2)"]


def test_mode_parallel_runs_side_by_side_up_to_max(driver):
    _, cmds = _run_mode(driver, "parallel")
    assert cmds == [(0, 0, 1), (1, 1, 1), (5, 0, 2), (6, 1, 2)]


def test_sequence_condition_step_and_state_variables(driver):
    d = driver("""
        state: {armed: false}
        rules:
          - id: arm
            trigger: arm
            actions: [{set: {armed: "${msg.on}"}}]
          - id: alarm
            trigger: motion
            condition: state.armed
            edge: false
            actions:
              - publish: siren
                data: {on: true}
              - condition: msg.level > 5
              - publish: siren
                data: {loud: true}
    """)
    d.at(0, "motion", {"level": 9})
    d.at(1, "arm", {"on": True})
    d.at(2, "motion", {"level": 1})
    d.at(3, "motion", {"level": 9})
    pubs = [(t, a.data) for t, a in d.log if isinstance(a, Publish)]
    assert pubs == [(2, {"on": True}), (3, {"on": True}), (3, {"loud": True})]
    assert d.engine.state["armed"] is True


def test_template_error_stops_that_run_only(driver):
    d = driver("""
        rules:
          - {id: bad, trigger: m, actions: [{publish: a, data: "${msg.nope}"}, {log: never}]}
          - {id: good, trigger: m, actions: [{log: "n=${msg.n}"}]}
    """)
    out = d.at(0, "m", {"n": 1})
    assert [a.text for a in out if isinstance(a, Log)] == ["n=1"]
    assert [a.rule for a in out if isinstance(a, RuleError)] == ["bad"]
    assert "test.rules.yaml:3" in [a for a in out if isinstance(a, RuleError)][0].where


def test_hostile_runtime_condition_does_not_stop_other_rules(driver):
    d = driver("""
        rules:
          - {id: bomb, trigger: m, condition: "'x' * msg.n > 'a'", actions: [{log: boom}]}
          - {id: slow, trigger: m, condition: "sum(sum(range(9000)) for i in range(9000)) > 0", actions: [{log: slow}]}
          - {id: good, trigger: m, actions: [{log: fine}]}
    """)
    for t in range(3):
        out = d.at(t, "m", {"n": 10**9})
        assert [a.text for a in out if isinstance(a, Log)] == ["fine"]
        assert {a.rule for a in out if isinstance(a, RuleError)} == {"bomb", "slow"}


def test_aliases_let_a_trigger_name_the_bus_topic():
    engine = Engine(loads_rules("rules: [{id: r, trigger: identity/faces, actions: [{log: x}]}]"))
    out = engine.handle(Message("faces", {}, aliases=("identity/faces",)), 0.0)
    assert [a.rule for a in out if isinstance(a, Log)] == ["r"]


def test_reload_keeps_unchanged_rules_state_and_cancels_changed_ones():
    text = """
rules:
  - {id: keep, trigger: m, cooldown: 100s, actions: [{log: k}]}
  - id: seq
    trigger: go
    actions: [{delay: 5s}, {command: lock, args: {}}]
"""
    engine = Engine(loads_rules(text))
    engine.handle(Message("m", {}), 0.0)
    engine.handle(Message("go", {}), 0.0)
    changed = text.replace("{delay: 5s}", "{delay: 6s}")
    engine.replace(loads_rules(changed))
    out = engine.handle(Message("m", {}), 1.0)  # still cooling down: state kept
    assert any(isinstance(a, Skipped) for a in out)
    out = engine.handle(TICK, 10.0)  # the changed rule's pending run was cancelled
    assert not any(isinstance(a, SendCommand) for a in out)


# --- budget strikes: a rule that keeps overrunning is disabled, the others keep firing ---------

def test_rule_over_its_budget_is_disabled_after_three_strikes_and_others_keep_firing(driver):
    from iotrt.rules import RuleDisabled

    d = driver("""
        rules:
          - {id: bomb, trigger: m, condition: "int('f' * msg.n, 16) > 0", actions: [{log: boom}]}
          - {id: good, trigger: m, edge: false, actions: [{log: fine}]}
    """)
    for t in range(6):
        out = d.at(t, "m", {"n": 90_000})
        assert [a.text for a in out if isinstance(a, Log)] == ["fine"]
        errors = [a.rule for a in out if isinstance(a, RuleError)]
        disabled = [a for a in out if isinstance(a, RuleDisabled)]
        assert errors == (["bomb"] if t < 3 else [])  # once disabled it is not evaluated
        assert [a.rule for a in disabled] == (["bomb"] if t == 2 else [])
    assert "test.rules.yaml:3" in [a for t, a in d.log if isinstance(a, RuleDisabled)][0].where


def test_one_slow_call_in_c_that_finishes_late_is_a_strike():
    from iotrt.rules import RuleDisabled

    # key=str runs ~10k calls inside sorted(): no expression step sees the time pass.
    engine = Engine(loads_rules("rules: [{id: slow, trigger: m, condition: "
                                "'len(sorted(range(10000), key=str)) > 0', actions: [{log: x}]}]"),
                    timeout_s=0.0002)
    notes = [a for t in range(3) for a in engine.handle(Message("m", {}), float(t))]
    assert [a.rule for a in notes if isinstance(a, RuleDisabled)] == ["slow"]
    assert "ran past its 0.2 ms budget" in [a for a in notes if isinstance(a, RuleDisabled)][0].reason


def test_a_descheduled_rule_is_not_struck(monkeypatch):
    import iotrt.rules.engine as engine_mod

    # The wall clock says the evaluation overran, this thread's CPU time says it did not
    # (the machine was busy): not the rule's fault.
    engine = Engine(loads_rules("rules: [{id: r, trigger: m, edge: false, actions: [{log: x}], "
                                "condition: 'len(sorted(range(10000), key=str)) > 0'}]"),
                    timeout_s=0.0002)
    monkeypatch.setattr(engine_mod.time, "thread_time", lambda: 0.0)
    for t in range(5):
        out = engine.handle(Message("m", {}), float(t))
        assert [a.text for a in out if isinstance(a, Log)] == ["x"]


def test_reload_gives_a_disabled_rule_a_new_chance(driver):
    from iotrt.rules import RuleDisabled

    text = """
        rules:
          - {id: bomb, trigger: m, condition: "int('f' * msg.n, 16) > 0", actions: [{log: boom}]}
    """
    d = driver(text)
    for t in range(3):
        d.at(t, "m", {"n": 90_000})
    assert [a.rule for t, a in d.log if isinstance(a, RuleDisabled)] == ["bomb"]
    d.engine.replace(loads_rules(textwrap.dedent(text), "test.rules.yaml"))
    assert [a.text for a in d.at(4, "m", {"n": 2}) if isinstance(a, Log)] == ["boom"]


# --- windowed count: `for: {count: N, within: DURATION}` ----------------------------------------

def test_windowed_count_fires_on_n_true_hits_within_the_window(driver):
    d = driver("""
        rules:
          - id: visit
            trigger: faces
            condition: len(msg.faces) > 0
            edge: false
            for: {count: 3, within: 60s}
            actions: [{log: visit}]
    """)
    face, empty = {"faces": [{"name": "owner"}]}, {"faces": []}
    # a flickering detection: false frames in between do not restart the count
    for t, data in [(0, face), (1, empty), (2, face), (3, empty), (30, face)]:
        d.at(t, "faces", data)
    assert d.fired("visit") == [30]
    # the count starts afresh after a firing; hits older than the window drop out
    for t in (40, 41, 102):
        d.at(t, "faces", face)
    assert d.fired("visit") == [30]  # 40 and 41 are more than 60 s before 102
    d.at(103, "faces", face)
    d.at(104, "faces", face)
    assert d.fired("visit") == [30, 104]


def test_windowed_count_is_checked_at_load():
    for bad, message in [("{within: 60s}", "give {count: N}"),
                         ("{count: 3, within: 0}", "within must be > 0"),
                         ("{count: 3, seconds: 2}", "give {count: N}"),
                         ("{count: 3, whithin: 60s}", "did you mean 'within'")]:
        with pytest.raises(RulesError, match=message):
            loads_rules(f"rules: [{{id: r, trigger: m, for: {bad}, actions: [{{log: x}}]}}]")


def test_now_is_the_engines_monotonic_time(driver):
    d = driver("""
        rules:
          - {id: r, trigger: m, edge: false, actions: [{log: "t=${now}"}]}
    """)
    assert [a.text for a in d.at(12.5, "m", {}) if isinstance(a, Log)] == ["t=12.5"]
