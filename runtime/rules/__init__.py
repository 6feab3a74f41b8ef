"""The rule engine: rules as data (YAML) or Python, evaluated on messages and time.

    from iotrt.rules import rule                       # write Python rules
    from iotrt.rules import Engine, Message, TICK, load_rules

See docs/rules.md for the guide. The engine is pure logic (engine.py); the rule-engine node
(iotrt.nodes.action.rules) wires it to the bus and the actuators.
"""

from iotrt.rules.actions import (
    TICK,
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
from iotrt.rules.api import load_rules, loads_rules, rule
from iotrt.rules.engine import Engine
from iotrt.rules.expressions import Expression, ExpressionError
from iotrt.rules.schema import CommandStep, Interpolated, PublishStep, RuleDef, RuleSet
from iotrt.rules.source import Problem, RulesError

__all__ = [
    "TICK", "Engine", "ExpressionError", "Fired", "Log", "Message", "Problem", "Publish",
    "RuleContext", "RuleDef", "RuleDisabled", "RuleError", "RuleSet", "RulesError", "SendCommand",
    "Skipped", "StateSet", "Tick",
    # a rule set's parts, for nodes that inspect what the rules do (wiring checks, discovery)
    "CommandStep", "Expression", "Interpolated", "PublishStep",
    "load_rules", "loads_rules", "rule",
]
