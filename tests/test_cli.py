"""The `iotrt` entry point: help, version, and the README/CI test command staying in sync."""

import re
import subprocess
import sys
from pathlib import Path

import iotrt
from iotrt.cli import VERBS, main

ROOT = Path(__file__).resolve().parents[1]


def test_version_and_help_list_every_verb():
    out = subprocess.run(
        [sys.executable, "-m", "iotrt", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for verb in VERBS:
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
    assert table == set(VERBS)


def test_a_reader_closing_the_pipe_ends_the_verb_quietly(tmp_path):
    """`iotrt echo TOPIC | head`: when head exits, the verb's next write raises BrokenPipeError;
    iotrt must end with status 0 and no traceback."""
    script = tmp_path / "pipe.py"
    script.write_text(
        "import sys, types\n"
        "from iotrt import cli\n"
        "m = types.ModuleType('iotrt.verbs.flood')\n"
        "m.add_arguments = lambda p: None\n"
        "def run(args):\n"
        "    while True:\n"
        "        print('x' * 1000, flush=True)\n"
        "m.run = run\n"
        "sys.modules[m.__name__] = m\n"
        "cli.VERBS['flood'] = (m.__name__, 'writes forever')\n"
        "sys.exit(cli.main(['flood']))\n")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=30) == 0, err
    assert "Traceback" not in err
