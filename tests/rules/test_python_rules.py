"""Python rules: the @rule decorator, generator delays, callable conditions, failures."""

from __future__ import annotations

import textwrap

from iotrt.rules import TICK, Engine, Log, Message, Publish, RuleError, SendCommand, Skipped, load_rules


def _engine(tmp_path, source: str) -> Engine:
    path = tmp_path / "my_rules.py"
    path.write_text(textwrap.dedent(source))
    return Engine(load_rules(path))


def test_python_rule_with_callable_condition_and_generator_delay(tmp_path):
    engine = _engine(tmp_path, """
        from iotrt.rules import rule

        def owner_seen(ctx):
            return any(f["name"] == "owner" for f in ctx.msg["faces"])

        @rule(trigger="faces", condition=owner_seen, cooldown="10s")
        def welcome(ctx):
            \"\"\"Unlock, then say so when the door has locked again.\"\"\"
            ctx.command("lock", {"action": "unlock", "duration_s": 5})
            ctx.state["visits"] = ctx.state.get("visits", 0) + 1
            yield "5s"
            ctx.publish("events", {"event": "relocked", "visits": ctx.state["visits"]})
    """)
    rule = engine.rules[0]
    assert rule.id == "welcome" and rule.description.startswith("Unlock")
    out = engine.handle(Message("faces", {"faces": [{"name": "owner"}]}), 0.0)
    assert [a.data for a in out if isinstance(a, SendCommand)] == [{"action": "unlock", "duration_s": 5}]
    assert engine.handle(TICK, 4.9) == []
    out = engine.handle(TICK, 5.0)
    assert [a.data for a in out if isinstance(a, Publish)] == [{"event": "relocked", "visits": 1}]
    out = engine.handle(Message("faces", {"faces": [{"name": "stranger"}]}), 6.0)
    assert out == []


def test_python_rule_shares_yaml_semantics_expression_condition_and_hold(tmp_path):
    engine = _engine(tmp_path, """
        from iotrt.rules import rule

        @rule(trigger={"threshold": "range", "value": "msg.distance", "below": 0.3},
              mode="single", hold={"count": 1})
        def stop(ctx):
            ctx.command("motors", {"left": 0, "right": 0})

        @rule(trigger="range", condition="msg.distance > 2", edge=False)
        def cruise(ctx):
            ctx.log(f"clear road: {ctx.msg['distance']}")
    """)
    kinds = []
    for t, d in enumerate([1.0, 0.2, 0.1, 3.0, 0.25]):
        kinds += [type(a).__name__ for a in engine.handle(Message("range", {"distance": d}), t)
                  if isinstance(a, (SendCommand, Log))]
    assert kinds == ["SendCommand", "Log", "SendCommand"]


def test_exception_in_python_rule_is_a_rule_error_and_others_go_on(tmp_path):
    engine = _engine(tmp_path, """
        from iotrt.rules import rule

        @rule(trigger="m")
        def broken(ctx):
            ctx.publish("a", {"before": True})
            raise KeyError("faces")

        @rule(trigger="m", condition=lambda ctx: 1 / 0)
        def bad_condition(ctx):
            pass

        @rule(trigger="m")
        def fine(ctx):
            ctx.log("still here")
    """)
    out = engine.handle(Message("m", {}), 0.0)
    errors = {a.rule: a.message for a in out if isinstance(a, RuleError)}
    assert "KeyError" in errors["broken"] and "ZeroDivisionError" in errors["bad_condition"]
    assert "my_rules.py:4" in [a.where for a in out if isinstance(a, RuleError) and a.rule == "broken"][0]
    assert [a.text for a in out if isinstance(a, Log)] == ["still here"]
    assert [a.data for a in out if isinstance(a, Publish)] == [{"before": True}]


def test_python_rule_modes_apply_to_generator_runs(tmp_path):
    engine = _engine(tmp_path, """
        from iotrt.rules import rule

        @rule(trigger="go", mode="single")
        def slow(ctx):
            ctx.command("c", {"n": ctx.msg})
            yield 2.0
            ctx.command("c", {"n": ctx.msg, "done": True})
    """)
    out = engine.handle(Message("go", 1), 0.0) + engine.handle(Message("go", 2), 1.0)
    assert any(isinstance(a, Skipped) for a in out)
    out += engine.handle(TICK, 2.0)
    assert [a.data for a in out if isinstance(a, SendCommand)] == [{"n": 1}, {"n": 1, "done": True}]


def test_bad_yield_is_reported(tmp_path):
    engine = _engine(tmp_path, """
        from iotrt.rules import rule

        @rule(trigger="go")
        def odd(ctx):
            yield "soon"
    """)
    out = engine.handle(Message("go", 1), 0.0)
    assert [a.rule for a in out if isinstance(a, RuleError)] == ["odd"]
    assert engine.running() == 0


def test_python_rules_keep_docstrings_and_asserts_in_an_optimized_process(tmp_path):
    """A graph's `optimize: 2` runs nodes under -OO; the user's rules file is still compiled as
    written: its docstring is the rule's description and its assert runs."""
    import subprocess
    import sys

    (tmp_path / "my_rules.py").write_text(textwrap.dedent('''
        from iotrt.rules import rule

        @rule(trigger="faces")
        def welcome(ctx):
            """Unlock for the owner."""
            assert ctx.msg["faces"], "no faces"
    '''))
    probe = textwrap.dedent(f'''
        import sys
        from iotrt.rules import Engine, Message, load_rules
        if sys.flags.optimize != 2 or load_rules.__doc__ is not None:   # (an assert would vanish)
            sys.exit('not running under -OO')
        engine = Engine(load_rules({str(tmp_path / "my_rules.py")!r}))
        print(engine.rules[0].description)
        print([type(a).__name__ for a in engine.handle(Message("faces", {{"faces": []}}), 0.0)])
    ''')
    out = subprocess.run([sys.executable, "-OO", "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    description, actions = out.stdout.splitlines()
    assert description == "Unlock for the owner."
    assert "RuleError" in actions   # the assert fired and was reported as the rule's error
