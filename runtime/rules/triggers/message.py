"""`trigger: {message: faces}` (or just `trigger: faces`): every message on the input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from iotrt.rules.parsing import check_keys, line_of, topic
from iotrt.rules.triggers.base import TriggerKind


@dataclass(frozen=True)
class MessageTrigger(TriggerKind):
    KEY = "message"
    every_message = True

    topic: str

    @classmethod
    def parse(cls, d: Mapping, line: int) -> MessageTrigger:
        check_keys(d, ("message",), "a message trigger", line)
        return cls(topic(d["message"], "message topic", line_of(d, "message", line)))

    def describe(self) -> str:
        return f"message {self.topic}"
