"""Loading rules: every mistake is reported as file:line with a message a user can act on."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from iotrt.rules import RulesError, load_rules, loads_rules
from iotrt.rules.schema import parse_duration

ROOT = Path(__file__).resolve().parents[2]

GOOD_RULE = "  - {id: ok, trigger: m, actions: [{log: x}]}\n"

# (rules file text, expected line, fragment of the message)
BAD = [
    ("rules:\n  - id: a\n    trigger: m\n    actoins: [{log: x}]\n", 4, "did you mean 'actions'"),
    ("rules:\n  - id: a\n    trigger: m\n", 2, "needs 'actions'"),
    ("rules:\n  - id: a\n    actions: [{log: x}]\n", 2, "needs a 'trigger'"),
    ("rules:\n  - id: a b\n    trigger: m\n    actions: [{log: x}]\n", 2, "rule id must be a name"),
    ("rules:\n  - id: a\n    trigger: {mesage: m}\n    actions: [{log: x}]\n", 3,
     "needs exactly one of: message"),
    ("rules:\n  - id: a\n    trigger: m\n    condition: msg.x >\n    actions: [{log: x}]\n", 4,
     "not a valid expression"),
    ("rules:\n  - id: a\n    trigger: m\n    condition: msg.__class__\n    actions: [{log: x}]\n",
     4, "attributes starting with '_'"),
    ("rules:\n  - id: a\n    trigger: m\n    condition: foo > 1\n    actions: [{log: x}]\n", 4,
     "unknown name 'foo'"),
    ("rules:\n  - id: a\n    trigger: m\n    cooldown: 5 parsecs\n    actions: [{log: x}]\n", 4,
     "expected a duration"),
    ("rules:\n  - id: a\n    trigger: m\n    mode: sometimes\n    actions: [{log: x}]\n", 4,
     "mode must be one of single, restart, queued, parallel"),
    ("rules:\n  - id: a\n    trigger: m\n    max: 0\n    actions: [{log: x}]\n", 4, "max must be"),
    ("rules:\n  - id: a\n    trigger: m\n    for: {count: 0}\n    actions: [{log: x}]\n", 4,
     "count must be an integer >= 1"),
    ("rules:\n  - id: a\n    trigger: m\n    actions:\n      - log: x\n      - delay: soon\n", 6,
     "expected a duration"),
    ("rules:\n  - id: a\n    trigger: m\n    actions:\n      - publish: out\n        data: '${msg.}'\n",
     6, "template"),
    ("rules:\n  - id: a\n    trigger: m\n    actions:\n      - command: lock\n        args: 5\n",
     6, "command args must be a mapping"),
    ("rules:\n  - id: a\n    trigger: m\n    actions:\n      - notify: phone\n", 5,
     "needs 'message'"),
    ("rules:\n  - id: a\n    trigger: {threshold: t, value: msg.d}\n    actions: [{log: x}]\n", 3,
     "needs 'above', 'below'"),
    ("rules:\n  - id: a\n    trigger: {absent: t}\n    actions: [{log: x}]\n", 3, "needs 'for"),
    ("rules:\n  - id: a\n    trigger: {interval: 0s}\n    actions: [{log: x}]\n", 3, "must be > 0"),
    ("rules:\n" + GOOD_RULE + "  - {id: ok, trigger: n, actions: [{log: y}]}\n", 3,
     "duplicate rule id 'ok' (first at line 2)"),
    ("rules:\n  - id: a\n    id: b\n    trigger: m\n    actions: [{log: x}]\n", 3,
     "duplicate key 'id' (first at line 2)"),
    ("rules:\n  - id: a\n    trigger: m\n    edge: maybe\n    actions: [{log: x}]\n", 4,
     "edge must be true or false"),
    ("rules:\n  - id: a\n    trigger: m\n    quiet: yes\n    actions: [{log: x}]\n", 4,
     "quiet must be true or false, got 'yes'"),
    ("rules: [\n", 2, "YAML syntax"),
    ("rulez: []\n", 1, "did you mean 'rules'"),
    ("rules:\n  - id: a\n    trigger: m\n    actions: [{log: x, delay: 1s}]\n", 4,
     "exactly one of"),
]


@pytest.mark.parametrize("text, line, fragment", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_rules_file_reports_file_line_and_what(text, line, fragment):
    with pytest.raises(RulesError) as info:
        loads_rules(text, "door.rules.yaml")
    messages = [str(p) for p in info.value.problems]
    assert any(m.startswith(f"door.rules.yaml:{line}: ") and fragment in m for m in messages), messages


def test_all_problems_are_reported_not_just_the_first():
    text = "rules:\n  - {id: a, trigger: m, mode: x, actions: [{log: x}]}\n" + GOOD_RULE + \
        "  - {id: c, trigger: m, cooldown: -1, actions: [{log: x}]}\n"
    with pytest.raises(RulesError) as info:
        loads_rules(text, "f.yaml")
    assert [p.line for p in info.value.problems] == [2, 4]


def test_durations():
    assert parse_duration("5s") == 5.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2min") == 120.0
    assert parse_duration("1.5 h") == 5400.0
    assert parse_duration(3) == 3.0


def test_python_rules_errors_have_file_and_line(tmp_path):
    bad_syntax = tmp_path / "syntax.py"
    bad_syntax.write_text("from iotrt.rules import rule\n\ndef broken(:\n    pass\n")
    with pytest.raises(RulesError, match=r"syntax.py:3: Python syntax"):
        load_rules(bad_syntax)
    bad_option = tmp_path / "option.py"
    bad_option.write_text(textwrap.dedent("""\
        from iotrt.rules import rule


        @rule(trigger="m", mode="often")
        def r(ctx):
            pass
    """))
    with pytest.raises(RulesError, match=r"option.py:4: @rule on r: mode must be one of"):
        load_rules(bad_option)
    raises = tmp_path / "raises.py"
    raises.write_text("x = 1\ny = 1 / 0\n")
    with pytest.raises(RulesError, match=r"raises.py:2: importing the rules raised ZeroDivisionError"):
        load_rules(raises)


def test_yaml_names_python_rules_relative_to_itself(tmp_path):
    (tmp_path / "extra.py").write_text(textwrap.dedent("""\
        from iotrt.rules import rule

        @rule(trigger="m")
        def extra(ctx):
            ctx.log("from python")
    """))
    (tmp_path / "main.rules.yaml").write_text("python: [extra.py]\nrules:\n" + GOOD_RULE)
    ruleset = load_rules(tmp_path / "main.rules.yaml")
    assert [r.id for r in ruleset.rules] == ["ok", "extra"]
    (tmp_path / "dup.rules.yaml").write_text(
        "python: [extra.py]\nrules:\n  - {id: extra, trigger: m, actions: [{log: x}]}\n")
    with pytest.raises(RulesError, match="duplicate rule id 'extra'"):
        load_rules(tmp_path / "dup.rules.yaml")


def test_shipped_door_rules_are_valid():
    ruleset = load_rules(ROOT / "configs" / "door.rules.yaml")
    assert {r.id for r in ruleset.rules} == {"unlock_for_enrolled", "visitor",
                                             "unlock_from_home_assistant", "lock_from_home_assistant"}
