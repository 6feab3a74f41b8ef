"""Did-you-mean hints for names a user typed: the one implementation every message uses (graph
files, node params, rules, command lines). Imports only the standard library, so the lowest
layers and every node process can use it."""

from __future__ import annotations

import difflib
from typing import Iterable


def suggest(word: object, choices: Iterable[object]) -> str:
    """" (did you mean 'x'?)" when a choice is close to `word`, else ""."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
