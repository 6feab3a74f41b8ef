"""docs/rules.md: every tagged example is loaded, and every shown output is reproduced exactly.

Conventions in the guide: a ```yaml rules``` or ```python rules``` block is a rules file (with
`file=PATH`, it must equal that file of the repository); a ```yaml messages``` block is a
messages file; a ```text output of: iotrt rules test ...``` block is what that command prints
for the latest rules and messages blocks above it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from iotrt.cli import main
from iotrt.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "rules.md"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks():
    return [(lang, info.strip(), body) for lang, info, body in BLOCK.findall(GUIDE.read_text())]


def examples():
    """(rules text, rules kind, messages text, command, expected output) per output block."""
    out, rules, messages = [], None, None
    for lang, info, body in blocks():
        if info.startswith("rules"):
            rules = (body, lang)
        elif info == "messages":
            messages = body
        elif info.startswith("output of:"):
            out.append((rules, messages, info[len("output of:"):].strip(), body))
    return out


def test_the_guide_has_examples_to_run():
    tagged = [info for _, info, _ in blocks()]
    assert sum(i.startswith("rules") for i in tagged) >= 3
    assert len(examples()) >= 3


@pytest.mark.parametrize("lang, info, body", [b for b in blocks() if b[1].startswith("rules")],
                         ids=lambda v: v[:30] if isinstance(v, str) else "")
def test_rules_blocks_are_valid(tmp_path, lang, info, body):
    if "file=" in info:
        path = ROOT / info.split("file=", 1)[1].strip()
        assert body == path.read_text(), f"the guide's copy of {path.name} is out of date"
    file = tmp_path / ("example.py" if lang == "python" else "example.rules.yaml")
    file.write_text(body)
    assert load_rules(file).rules


@pytest.mark.parametrize("rules, messages, command, expected", examples(),
                         ids=lambda v: v.split()[3] if isinstance(v, str) and v.startswith("iotrt") else "")
def test_shown_outputs_are_what_the_command_prints(tmp_path, monkeypatch, capsys,
                                                   rules, messages, command, expected):
    argv = shlex.split(command)
    assert argv[:3] == ["iotrt", "rules", "test"]
    rules_path, input_path = tmp_path / argv[3], tmp_path / argv[argv.index("--input") + 1]
    rules_path.parent.mkdir(parents=True, exist_ok=True)
    rules_path.write_text(rules[0])
    input_path.write_text(messages)
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:]) == 0
    assert capsys.readouterr().out == expected
