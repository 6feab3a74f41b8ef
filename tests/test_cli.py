"""The `iotrt` entry point: help, version, and the README/CI test command staying in sync."""

import re
import subprocess
import sys
from pathlib import Path

import iotrt
from iotrt.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_version_and_help_list_every_verb():
    out = subprocess.run(
        [sys.executable, "-m", "iotrt", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for verb in COMMANDS:
        assert verb in out
    version = subprocess.run(
        [sys.executable, "-m", "iotrt", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert iotrt.__version__ in version


def test_unknown_verb_is_an_error(capsys):
    try:
        main(["frobnicate"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("an unknown verb must fail")
    assert "invalid choice" in capsys.readouterr().err


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    test_cmds = [b.strip() for b in blocks if "pytest" in b]
    assert len(test_cmds) == 1, "the README should give one test command"
    assert test_cmds[0] in (ROOT / ".ci" / "run").read_text()


def test_readme_command_table_lists_every_verb():
    readme = (ROOT / "README.md").read_text()
    table = {m for m in re.findall(r"^\| `iotrt (\w+)", readme, re.M)}
    assert table == set(COMMANDS)
