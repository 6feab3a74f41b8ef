"""The rule engine: pure logic over messages and time, no sockets, no threads.

    engine = Engine(load_rules("door.rules.yaml"))
    actions = engine.handle(Message("faces", {...}), now=time.monotonic())
    actions = engine.handle(TICK, now=time.monotonic())      # let time pass (holds, delays, ...)

`now` is monotonic seconds (holds, cooldowns, delays, absences and intervals only ever compare
monotonic times, so a wall-clock jump changes nothing); `wall` is the local wall-clock time,
used only for time-of-day triggers and the hour/minute/weekday variables (read from the
system only when the caller does not pass it: tests and replays do). The caller executes
the returned actions (`SendCommand`, `Publish`, `Log`) and may journal the notes (`Fired`,
`Skipped`, `RuleError`, `RuleDisabled`). A rule whose expression or Python body fails yields
a RuleError and the other rules carry on. A rule whose expressions overrun their budget (a size,
step or time bound; time confirmed by this thread's CPU time, so a busy machine does not count)
`max_strikes` times is disabled until the next reload (`RuleDisabled`), so a hostile rule or
message cannot keep stealing the node's time.

Per rule, a trigger hit goes through: conditions -> edge (fire once per episode of the
condition being true) -> `for:` hold -> cooldown -> mode (single/restart/queued/parallel) ->
a run of the rule's action steps, which may pause on `delay` and resume on a later call.
"""

from __future__ import annotations

import datetime as dt
import inspect
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from iotrt.rules.actions import (
    Action,
    Fired,
    Log,
    Message,
    Publish,
    RuleContext,
    RuleDisabled,
    RuleError,
    SendCommand,
    Skipped,
    StateSet,
    Tick,
)
from iotrt.rules.expressions import (
    DEFAULT_TIMEOUT_S,
    EVALUATION_ERRORS,
    Evaluator,
    Expression,
    ExpressionError,
    ExpressionLimit,
    ExpressionTimeout,
    evaluation_error,
    join_checked,
    safe_str,
)
from iotrt.rules.parsing import parse_duration
from iotrt.rules.schema import (
    CommandStep,
    ConditionStep,
    DelayStep,
    Interpolated,
    LogStep,
    PublishStep,
    RuleDef,
    RuleSet,
    SetStep,
    Step,
)
from iotrt.rules.triggers import EPS as _EPS
from iotrt.rules.triggers import Clock, TriggerError, TriggerKind

# Budget overruns after which a rule is disabled (until the rules are reloaded).
MAX_STRIKES = 3
# A time overrun is the rule's fault when it used at least this share of its budget in CPU time.
CPU_SHARE = 0.25


# --- runtime state ----------------------------------------------------------------------------

@dataclass(eq=False)
class _Run:
    """One execution of a rule's actions, possibly paused on a delay."""

    rule: _RuleState
    names: dict[str, Any]
    pc: int = 0
    resume_at: float | None = None
    gen: _GeneratorRun | None = None


# fire(names, now, out, trigger, fired=None): a hit past its conditions and hold (cooldown,
# mode, run); `fired`, if given, is the Fired note to journal (made once per trigger).
Fire = Callable[..., None]
# What a message on a topic runs for one rule's trigger: (rule state, run, condition, edge,
# description, its Fired note, None) for the commonest rule, run by _on_message itself (every
# message a hit, one expression condition, no hold); else (rule state, None, None, False,
# description, None, function(names, now, out)).
_Listener = tuple[Any, Any, Any, bool, str, Any, Any]


@dataclass(eq=False, slots=True)
class _RuleState:
    rule: RuleDef
    armed: bool = True  # edge: re-armed when the condition is seen false
    hold_since: float | None = None
    hold_count: int = 0
    hold_times: deque = field(default_factory=deque)  # `for: {count, within}`: true hits
    hold_names: dict[str, Any] | None = None
    hold_trigger: str = ""
    last_fired: float | None = None
    runs: list[_Run] = field(default_factory=list)
    queue: deque = field(default_factory=deque)
    triggers: list[Any] | None = None  # each trigger's state, from its start() (None: not yet)
    strikes: int = 0  # expression budget overruns since load
    disabled: str = ""  # why the rule is off ("" = on)
    steps: list[StepCode] = field(default_factory=list)  # the rule's actions, compiled
    sync: bool = False  # YAML actions without a delay: a run starts and ends in one call
    condition: Expression | None = None  # the rule's only condition, when it is an expression
    fire: Fire | None = None  # Engine._fire specialised for this rule (Engine._fire_function)

    def __post_init__(self) -> None:
        conds = self.rule.conditions
        # The commonest rule has one expression condition: _hit evaluates it inline.
        self.condition = conds[0] if len(conds) == 1 and type(conds[0]) is Expression else None
        self.steps = [_compile_step(step) for step in self.rule.steps]
        self.sync = self.rule.func is None and not any(
            isinstance(step, DelayStep) for step in self.rule.steps)

    @property
    def timed(self) -> bool:
        r = self.rule
        return bool(r.hold and r.hold.seconds) or any(t.timed for t in r.triggers)


class Engine:
    """Evaluates a set of rules. Single-threaded: call `handle` from one thread."""

    def __init__(self, rules: RuleSet | Iterable[RuleDef], *, state: dict | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_strikes: int = MAX_STRIKES) -> None:
        self.evaluator = Evaluator(timeout_s)
        self.max_strikes = max_strikes
        self._out: list[Action] = []
        self._cpu0 = 0.0
        self.state: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self.now = 0.0
        self.wall = dt.datetime(1970, 1, 1)
        self._started: float | None = None
        self._prev_wall: dt.datetime | None = None
        self._sleeping: list[_Run] = []
        self._rules: list[_RuleState] = []
        self.replace(rules, state=state)

    # -- set-up and reload ---------------------------------------------------------------------

    @property
    def rules(self) -> list[RuleDef]:
        return [rs.rule for rs in self._rules]

    def replace(self, rules: RuleSet | Iterable[RuleDef], *, state: dict | None = None) -> None:
        """Swap in new rules. A rule whose definition is unchanged keeps its state and runs;
        removed or changed rules have their runs cancelled. Variables already set are kept."""
        if isinstance(rules, RuleSet):
            state = {**rules.state, **(state or {})}
            rules = rules.rules
        old = {rs.rule.id: rs for rs in self._rules}
        new: list[_RuleState] = []
        for rule in rules:
            prev = old.pop(rule.id, None)
            if prev is not None and prev.rule.fingerprint == rule.fingerprint and rule.fingerprint:
                prev.rule = rule
                prev.strikes, prev.disabled = 0, ""  # a reload gives a disabled rule a new chance
                new.append(prev)
            else:
                if prev is not None:
                    old[rule.id] = prev  # cancelled below
                new.append(_RuleState(rule))
        for gone in old.values():
            self._cancel(gone)
        self._rules = new
        for key, value in (state or {}).items():
            self.state.setdefault(key, value)
        if self._started is not None:
            for rs in new:
                self._init_timers(rs, self.now)
        # What a message on a topic runs, per (rule, trigger) listening to it, in the rules'
        # order, decided here once rather than again per message: see _on_message.
        self._by_topic: dict[str, list[_Listener]] = {}
        for rs in new:
            rs.fire = self._fire_function(rs)
            for i, trig in enumerate(rs.rule.triggers):
                if trig.topic is not None:
                    self._by_topic.setdefault(trig.topic, []).append(self._listener(rs, i, trig))
        self._timed = [rs for rs in new if rs.timed]

    def topics(self) -> set[str]:
        """Every topic some trigger listens to."""
        return set(self._by_topic)

    def outputs(self) -> tuple[set[str], set[str]]:
        """(command outputs, publish outputs) that YAML rules use."""
        commands, publishes = set(), set()
        for rs in self._rules:
            for step in rs.rule.steps:
                if isinstance(step, CommandStep):
                    commands.add(step.output)
                elif isinstance(step, PublishStep):
                    publishes.add(step.output)
        return commands, publishes

    def _init_timers(self, rs: _RuleState, now: float) -> None:
        if rs.triggers is None:
            rs.triggers = [trig.start(now) for trig in rs.rule.triggers]

    # -- the entry point ---------------------------------------------------------------------

    def handle(self, event: Message | Tick, now: float,
               wall: dt.datetime | None = None) -> list[Action]:
        """Feed one message (or a tick) at monotonic time `now`; returns the actions to take."""
        out: list[Action] = []
        self._out = out
        self._cpu0 = time.thread_time()
        self.now = now
        self.wall = wall if wall is not None else dt.datetime.now()
        if self._started is None:
            self._started = now
            for rs in self._rules:
                self._init_timers(rs, now)
        if self._sleeping:
            self._resume_due(now, out)
        if isinstance(event, Message):
            self._on_message(event, now, out)
        if self._timed:
            self._on_time(now, out)
        self._prev_wall = self.wall
        return out

    def running(self) -> int:
        """How many runs are waiting (on a delay, or queued behind another run)."""
        return len(self._sleeping) + sum(len(rs.queue) for rs in self._rules)

    def next_due(self) -> float | None:
        """The earliest monotonic time at which `handle(TICK, ...)` would do something."""
        times = [r.resume_at for r in self._sleeping if r.resume_at is not None]
        clock = Clock(self.now, self.wall, self._prev_wall)
        for rs in self._timed:
            hold = rs.rule.hold
            if hold and hold.seconds is not None and rs.hold_since is not None:
                times.append(rs.hold_since + hold.seconds)
            if rs.triggers is None or rs.disabled:
                continue
            for trig, state in zip(rs.rule.triggers, rs.triggers):
                if trig.timed and (due := trig.due(state, clock)) is not None:
                    times.append(due)
        return min(times) if times else None

    # -- triggers ----------------------------------------------------------------------------

    def _on_message(self, msg: Message, now: float, out: list[Action]) -> None:
        topic = msg.topic
        self.last[topic] = msg.data
        hits = self._by_topic.get(topic, ())
        for alias in msg.aliases:
            if alias != topic and alias in self._by_topic:
                hits = [*hits, *self._by_topic[alias]]
        # One set of variables for every message trigger of this message (read-only to
        # expressions); other kinds may add to their `trigger` dict, so they get their own.
        shared = self._names(topic, msg.data, {"kind": "message", "topic": topic})
        c = self.evaluator.context
        c.names = shared
        for rs, run, cond, edge, described, fired, other in hits:
            if run is None:
                other(shared, now, out)
                c.names = shared  # (other evaluated its own variables)
                continue
            # The commonest rule, inlined: every message is a hit, one expression condition
            # (Evaluator.evaluate inlined, see its docstring), no hold. The same as _hit.
            if rs.disabled:
                continue
            try:
                ok = run(c)
            except ExpressionError as exc:
                self._condition_error(rs, cond, exc, out)
                ok = False
            except EVALUATION_ERRORS as exc:
                self._condition_error(rs, cond, evaluation_error(exc), out)
                ok = False
            else:
                if c.late:
                    self._late(rs, cond)
            if not ok:
                rs.armed = True  # (no hold to reset)
            elif not (edge and not rs.armed):  # else: already fired during this episode
                rs.fire(shared, now, out, described, fired)
                c.names = shared

    def _listener(self, rs: _RuleState, i: int, trig: TriggerKind) -> _Listener:
        """What _on_message does for rule `rs`'s trigger `i` (on a topic)."""
        rule, described = rs.rule, trig.describe()
        cond = rs.condition
        if trig.every_message and cond is not None and rule.hold is None:
            return rs, cond.run, cond, rule.edge, described, Fired(rule.id, described), None
        if trig.every_message:
            def every(shared: dict, now: float, out: list) -> None:
                if not rs.disabled:
                    self._hit(rs, shared, described, now, out)
            return rs, None, None, False, described, None, every
        evaluate, key = partial(self._eval, rs), trig.KEY

        def on_message(shared: dict, now: float, out: list) -> None:
            if rs.disabled:
                return
            names = {**shared, "trigger": {"kind": key, "topic": shared["topic"]}}
            try:
                hit = trig.on_message(rs.triggers[i], names, now, evaluate)
            except TriggerError as exc:
                out.append(RuleError(rule.id, rule.where, str(exc)))
                return
            if hit is not None:
                self._hit(rs, names, hit, now, out)
        return rs, None, None, False, described, None, on_message

    def _on_time(self, now: float, out: list[Action]) -> None:
        clock = Clock(now, self.wall, self._prev_wall)
        for rs in self._timed:
            if rs.disabled:
                continue
            for trig, state in zip(rs.rule.triggers, rs.triggers):
                if trig.timed and (fired := trig.on_time(state, clock)) is not None:
                    variables, described = fired
                    self._hit(rs, self._names(trig.topic, None, variables), described, now, out)
            hold = rs.rule.hold
            if (hold and hold.seconds is not None and rs.hold_since is not None
                    and now - rs.hold_since + _EPS >= hold.seconds):
                names, trigger = rs.hold_names or self._names(None, None, {}), rs.hold_trigger
                self._fire(rs, names, trigger, now, out)

    def _names(self, topic: str | None, data: Any, trigger: dict) -> dict[str, Any]:
        w = self.wall
        return {"msg": data, "topic": topic, "trigger": trigger, "state": self.state,
                "last": self.last, "now": self.now, "hour": w.hour, "minute": w.minute,
                "weekday": w.weekday()}

    # -- conditions, edge, hold, cooldown, mode ----------------------------------------------

    def _conditions(self, rs: _RuleState, names: dict, out: list[Action]) -> bool:
        ev = self.evaluator
        for cond in rs.rule.conditions:
            try:
                if cond.__class__ is Expression:  # inlines _eval: the hot path of every rule
                    ok = ev.evaluate(cond, names)
                    if ev.late:
                        self._late(rs, cond)
                else:
                    ok = cond(RuleContext(self, rs.rule, names))
            except ExpressionError as exc:
                self._condition_error(rs, cond, exc, out)
                return False
            except Exception as exc:  # noqa: BLE001 - a user's Python condition; reported, rule skipped
                out.append(RuleError(rs.rule.id, rs.rule.where,
                                     f"Python condition raised {type(exc).__name__}: {exc}"))
                return False
            if not ok:
                return False
        return True

    def _condition_error(self, rs: _RuleState, cond: Expression, exc: ExpressionError,
                         out: list[Action]) -> None:
        if isinstance(exc, ExpressionLimit):
            self._strike(rs, str(exc), timed=isinstance(exc, ExpressionTimeout))
        out.append(RuleError(rs.rule.id, rs.rule.where, f"condition '{cond}': {exc}"))

    def _hit(self, rs: _RuleState, names: dict, trigger: str, now: float, out: list[Action]) -> None:
        rule = rs.rule
        if rs.disabled:
            return
        cond = rs.condition
        if cond is not None:  # _conditions inlined for one expression: the hot path
            ev = self.evaluator
            try:
                ok = ev.evaluate(cond, names)
            except ExpressionError as exc:
                self._condition_error(rs, cond, exc, out)
                ok = False
            else:
                if ev.late:
                    self._late(rs, cond)
        else:
            ok = self._conditions(rs, names, out)
        if not ok:
            rs.armed, rs.hold_since, rs.hold_count = True, None, 0
            return
        if rule.edge and rule.conditions and not rs.armed:
            return  # already fired during this episode of the condition being true
        hold = rule.hold
        if hold is not None and hold.within is not None:
            # A sliding window: count true hits in the last `within` seconds, false ones
            # in between do not matter (a face that flickers out for a frame still counts).
            times = rs.hold_times
            times.append(now)
            while now - times[0] > hold.within + _EPS:
                times.popleft()
            if len(times) < hold.count:
                return
            times.clear()
        elif hold is not None and hold.count is not None:
            rs.hold_count += 1
            if rs.hold_count < hold.count:
                return
        elif hold is not None and hold.seconds is not None:
            if rs.hold_since is None:
                rs.hold_since = now
            rs.hold_names, rs.hold_trigger = names, trigger
            if now - rs.hold_since + _EPS < hold.seconds:
                return
        rs.fire(names, now, out, trigger)

    def _fire(self, rs: _RuleState, names: dict, trigger: str, now: float,
              out: list[Action]) -> None:
        rule = rs.rule
        if rs.disabled:
            return
        # One firing per episode (edge) and a fresh hold afterwards, whatever happens below.
        rs.armed = not (rule.edge and rule.conditions)
        rs.hold_since, rs.hold_count, rs.hold_names = None, 0, None
        if rs.last_fired is not None and now - rs.last_fired + _EPS < rule.cooldown:
            out.append(Skipped(rule.id, f"cooldown ({rule.cooldown:g}s)"))
            return
        queued = False
        if rs.runs:
            if rule.mode == "single":
                out.append(Skipped(rule.id, "already running (mode single)"))
                return
            if rule.mode == "restart":
                self._cancel(rs)
            elif rule.mode == "queued":
                if len(rs.runs) + len(rs.queue) >= rule.max:
                    out.append(Skipped(rule.id, f"queue full (max {rule.max})"))
                    return
                queued = True
            elif len(rs.runs) >= rule.max:  # parallel
                out.append(Skipped(rule.id, f"{rule.max} runs already (mode parallel)"))
                return
        rs.last_fired = now
        out.append(Fired(rule.id, trigger, queued))
        if queued:
            rs.queue.append(names)
        elif rs.sync:
            self._run_sync(rs, names, out)
        else:
            self._start(rs, names, now, out)

    def _fire_function(self, rs: _RuleState) -> Fire:
        """_fire for rule `rs`, specialised once per load: most rules' actions cannot pause,
        and those need only a part of what _fire decides (the same outcome)."""
        if not rs.sync:
            def generic_fire(names: dict, now: float, out: list, trigger: str,
                             fired: Fired | None = None) -> None:
                self._fire(rs, names, trigger, now, out)
            return generic_fire
        # Actions that cannot pause never leave a run behind (rs.runs and rs.queue stay empty),
        # so the mode has nothing to decide.
        rule = rs.rule
        rule_id, cooldown, steps = rule.id, rule.cooldown, rs.steps
        rearm = not (rule.edge and rule.conditions)
        hold = rule.hold is not None
        only = steps[0] if len(steps) == 1 else None

        def sync_fire(names: dict, now: float, out: list, trigger: str,
                      fired: Fired | None = None) -> None:
            if rs.disabled:
                return
            rs.armed = rearm
            if hold:
                rs.hold_since, rs.hold_count, rs.hold_names = None, 0, None
            last = rs.last_fired
            if last is not None and now - last + _EPS < cooldown:
                out.append(Skipped(rule_id, f"cooldown ({cooldown:g}s)"))
                return
            rs.last_fired = now
            out.append(Fired(rule_id, trigger, False) if fired is None else fired)
            if only is not None:  # the commonest: one action
                try:
                    only(self, rs, names, out)
                except ExpressionError as exc:
                    out.append(RuleError(rule_id, rs.rule.where, f"action 1: {exc}"))
                return
            for pc, step in enumerate(steps, 1):
                try:
                    if step(self, rs, names, out) is _STOP:
                        return
                except ExpressionError as exc:
                    out.append(RuleError(rule_id, rs.rule.where, f"action {pc}: {exc}"))
                    return
        return sync_fire

    # -- runs --------------------------------------------------------------------------------

    def _start(self, rs: _RuleState, names: dict, now: float, out: list[Action]) -> None:
        run = _Run(rs, names)
        rs.runs.append(run)
        if rs.rule.func is not None:
            ctx = RuleContext(self, rs.rule, names)
            try:
                result = rs.rule.func(ctx)
            except Exception as exc:  # noqa: BLE001 - a user's Python rule; reported, others go on
                out.extend(ctx.actions)
                self._error(rs, exc, out)
                self._finish(run, now, out)
                return
            out.extend(ctx.actions)
            if inspect.isgenerator(result):
                run.gen = _GeneratorRun(result, ctx)
        self._step(run, now, out)

    def _step(self, run: _Run, now: float, out: list[Action]) -> None:
        rs = run.rule
        if run.gen is not None:
            try:
                delay = run.gen.advance(out)
            except Exception as exc:  # noqa: BLE001 - a user's Python rule
                self._error(rs, exc, out)
                delay = None
            if delay is None:
                self._finish(run, now, out)
            else:
                self._sleep(run, now + delay)
            return
        steps = rs.steps
        while run.pc < len(steps):
            step = steps[run.pc]
            run.pc += 1
            try:
                result = step(self, rs, run.names, out)
            except ExpressionError as exc:
                out.append(RuleError(rs.rule.id, rs.rule.where, f"action {run.pc}: {exc}"))
                break
            if result is _STOP:
                break
            if result is not None:  # a delay
                self._sleep(run, now + result)
                return
        self._finish(run, now, out)

    def _run_sync(self, rs: _RuleState, names: dict, out: list[Action]) -> None:
        """A run of actions that cannot pause: no _Run to keep, nothing else can be running."""
        for pc, step in enumerate(rs.steps, 1):
            try:
                if step(self, rs, names, out) is _STOP:
                    return
            except ExpressionError as exc:
                out.append(RuleError(rs.rule.id, rs.rule.where, f"action {pc}: {exc}"))
                return

    def _sleep(self, run: _Run, until: float) -> None:
        run.resume_at = until
        self._sleeping.append(run)

    def _resume_due(self, now: float, out: list[Action]) -> None:
        due = sorted((r for r in self._sleeping if r.resume_at <= now + _EPS),
                     key=lambda r: r.resume_at)
        for run in due:
            self._sleeping.remove(run)
            # Continue from the scheduled time, so a late tick does not stretch later delays.
            at, run.resume_at = run.resume_at, None
            self._step(run, at, out)

    def _finish(self, run: _Run, now: float, out: list[Action]) -> None:
        rs = run.rule
        if run in rs.runs:
            rs.runs.remove(run)
        if rs.queue and not rs.runs:
            self._start(rs, rs.queue.popleft(), now, out)

    def _cancel(self, rs: _RuleState) -> None:
        for run in rs.runs:
            if run in self._sleeping:
                self._sleeping.remove(run)
        rs.runs.clear()
        rs.queue.clear()

    def _error(self, rs: _RuleState, exc: BaseException, out: list[Action]) -> None:
        out.append(RuleError(rs.rule.id, rs.rule.where, f"Python rule raised {type(exc).__name__}: {exc}"))

    # -- expression budgets --------------------------------------------------------------------

    def _eval(self, rs: _RuleState, expr: Expression, names: dict) -> Any:
        """Evaluate one of rule `rs`'s expressions, counting budget overruns against it."""
        ev = self.evaluator
        try:
            value = ev.evaluate(expr, names)
        except ExpressionLimit as exc:
            self._strike(rs, str(exc), timed=isinstance(exc, ExpressionTimeout))
            raise
        if ev.late:
            self._late(rs, expr)
        return value

    def _late(self, rs: _RuleState, expr: Expression) -> None:
        """The evaluation finished, but after its deadline: one slow operation in C."""
        ev = self.evaluator
        ev.late = False
        self._strike(rs, f"'{expr}' ran past its {ev.timeout_s * 1000:g} ms budget", timed=True)

    def _strike(self, rs: _RuleState, reason: str, timed: bool) -> None:
        # A time overrun counts only if this thread really spent a good part of the budget
        # computing (CPU time since this call to handle() began, which includes the other
        # rules' few microseconds): a rule that was merely descheduled on a busy machine is
        # not to blame. Normal conditions take microseconds, far below a quarter of 50 ms.
        if timed and time.thread_time() - self._cpu0 < self.evaluator.timeout_s * CPU_SHARE:
            return
        rs.strikes += 1
        if rs.strikes >= self.max_strikes and not rs.disabled:
            rs.disabled = (f"{rs.strikes} expression budget overruns, the last: {reason}; "
                           f"disabled until the rules are reloaded")
            self._cancel(rs)
            self._out.append(RuleDisabled(rs.rule.id, rs.rule.where, rs.disabled))


# --- actions compiled at load ----------------------------------------------------------------

# A compiled action step: step(engine, rule state, names, out) -> None (go on), a delay in
# seconds, or _STOP (a condition step was false).
StepCode = Callable[["Engine", _RuleState, dict, list], Any]
Render = Callable[["Engine", _RuleState, dict], Any]
_STOP = object()


def _literal(template: Any) -> bool:
    """A dict or list of literal scalars only (`data: {rule: 5}`)."""
    return isinstance(template, (dict, list)) and all(
        not isinstance(v, (dict, list, Expression, Interpolated))
        for v in (template.values() if isinstance(template, dict) else template))


def _compile_template(template: Any) -> Render:
    """Data whose strings may hold ${expr} -> a function building a fresh copy of it."""
    if isinstance(template, Expression):
        return lambda engine, rs, names: engine._eval(rs, template, names)
    if isinstance(template, Interpolated):
        parts = [(lambda text: lambda engine, rs, names: text)(p) if isinstance(p, str)
                 else (lambda e: lambda engine, rs, names: safe_str(engine._eval(rs, e, names)))(p)
                 for p in template.parts]
        return lambda engine, rs, names: join_checked([p(engine, rs, names) for p in parts])
    if _literal(template):  # a shallow copy is a fresh copy
        kind = type(template)
        return lambda engine, rs, names: kind(template)
    if isinstance(template, dict):
        items = [(k, _compile_template(v)) for k, v in template.items()]
        return lambda engine, rs, names: {k: f(engine, rs, names) for k, f in items}
    if isinstance(template, list):
        elements = [_compile_template(v) for v in template]
        return lambda engine, rs, names: [f(engine, rs, names) for f in elements]
    return lambda engine, rs, names: template  # str, number, bool, None: immutable


def _compile_step(step: Step) -> StepCode:
    if isinstance(step, CommandStep):
        args, output, label = _compile_template(step.args), step.output, step.label
        if _literal(step.args):  # the template's copy inlined
            kind, template = type(step.args), step.args

            def literal_command(engine: Engine, rs: _RuleState, names: dict, out: list) -> None:
                out.append(SendCommand(rs.rule.id, output, kind(template), label))
            return literal_command

        def command(engine: Engine, rs: _RuleState, names: dict, out: list) -> None:
            out.append(SendCommand(rs.rule.id, output, args(engine, rs, names), label))
        return command
    if isinstance(step, PublishStep):
        data, output = _compile_template(step.data), step.output
        if _literal(step.data):
            kind, template = type(step.data), step.data

            def literal_publish(engine: Engine, rs: _RuleState, names: dict, out: list) -> None:
                out.append(Publish(rs.rule.id, output, kind(template)))
            return literal_publish

        def publish(engine: Engine, rs: _RuleState, names: dict, out: list) -> None:
            out.append(Publish(rs.rule.id, output, data(engine, rs, names)))
        return publish
    if isinstance(step, SetStep):
        values = [(key, _compile_template(v)) for key, v in step.values]

        def set_(engine: Engine, rs: _RuleState, names: dict, out: list) -> None:
            changed = {}
            for key, value in values:  # in order: a later value may read an earlier one
                changed[key] = engine.state[key] = value(engine, rs, names)
            out.append(StateSet(rs.rule.id, changed))
        return set_
    if isinstance(step, LogStep):
        message = _compile_template(step.message)

        def log(engine: Engine, rs: _RuleState, names: dict, out: list) -> None:
            out.append(Log(rs.rule.id, safe_str(message(engine, rs, names))))
        return log
    if isinstance(step, ConditionStep):
        expr = step.expr

        def condition(engine: Engine, rs: _RuleState, names: dict, out: list) -> Any:
            return None if engine._eval(rs, expr, names) else _STOP
        return condition
    if isinstance(step, DelayStep):
        seconds = step.seconds
        return lambda engine, rs, names, out: seconds
    raise TypeError(step)


class _GeneratorRun:
    """Drives a generator-function Python rule: each `yield` is a delay (seconds or '5s')."""

    def __init__(self, gen: Iterator, ctx: RuleContext) -> None:
        self.gen, self.ctx = gen, ctx

    def advance(self, out: list[Action]) -> float | None:
        self.ctx.actions = []
        try:
            delay = next(self.gen)
        except StopIteration:
            return None
        finally:
            out.extend(self.ctx.actions)
        return parse_duration(delay)
