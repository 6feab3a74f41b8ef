"""Every fenced example in README.md and docs/*.md is executed or checked (issue 9).

The rule, by the block's info string (its first word is the language, the rest a tag):

- ```yaml        a graph, or a fragment of one (a `nodes:` mapping without `name:`, or an indented
                 list of nodes): completed with `name:`/`nodes:`, written to a temporary folder with
                 the files it names (rules files and `run:` nodes, created minimally) and
                 validated with `iotrt validate`.
- ```python      executed as a module in a temporary working folder.
- ```python api  a signature listing, not runnable: its `from iotrt... import ...` lines are run.
- ```sh          every `iotrt VERB ...` command is parsed by that verb's own argparse parser
                 (unknown verbs or options fail); the offline verbs (validate, graph, unit,
                 compile, rules check) also run for real, with file names resolved in the
                 repository or configs/ and outputs written to a temporary folder.
                 `deploy/install.sh ACTION --opt` must be in the script's usage; `pip install`
                 may only name extras pyproject.toml has; any other program must be listed in
                 OTHER_PROGRAMS.
- ```yaml rules / yaml messages / python rules / text output of: ...
                 belong to docs/rules.md's own test (tests/rules/test_docs.py).
- anything else (```text, ```c, ...) is an output sample or a sketch and is not run. A fence
  without an info string fails: say ```text if it is not meant to run.

The README's command table and its list of extras must match iotrt.cli and pyproject.toml.
Blocks another test already executes are listed in COVERED (and must still exist), so they are not
run twice.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from iotrt import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)

# (doc, language, text the block contains) -> the test that executes it.
COVERED = {
    ("README.md", "sh", "iotrt up configs/door.yaml"): "tests/e2e/test_quickstart.py",
    ("docs/nodes.md", "python", ""): "tests/runtime/test_docs.py",
    ("docs/nodes.md", "yaml", "my_nodes/facecount.py"): "tests/e2e/test_door_console.py",
    ("docs/compile.md", "python", ""): "tests/compiler/test_compile_docs.py",
    ("docs/actuators.md", "yaml", "kind: lock"): "tests/actuators/test_docs.py",
    ("docs/actuators.md", "python", "# buzzer.py"): "tests/actuators/test_docs.py",
}
OWN_TEST_TAGS = {"rules", "messages"}  # tests/rules/test_docs.py
EXECUTED = {"yaml", "python", "sh"}
OFFLINE_VERBS = {"validate", "graph", "unit", "compile", "rules check"}
# Programs other than iotrt that the docs show (system tools; not run here).
OTHER_PROGRAMS = {"python3", ".venv/bin/python", ".venv/bin/pip", ".venv/bin/ruff", ".ci/lint-imports",
                  "systemctl", "journalctl", "jq", "chown", "chmod"}
EXTRAS = set(re.findall(r"^([\w-]+) = ", (ROOT / "pyproject.toml").read_text()
                        .split("[project.optional-dependencies]")[1].split("\n[")[0], re.M))
# Environment variables a documented graph uses without a default.
ENV = {"DOORBELL_URL": "http://127.0.0.1:8080/doorbell"}


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    tag: str
    body: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def all_blocks() -> list[Block]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            lang, _, tag = m.group(1).strip().partition(" ")
            out.append(Block(str(path.relative_to(ROOT)), text.count("\n", 0, m.start()) + 1,
                             lang, tag.strip(), m.group(2)))
    return out


def covered_by(block: Block) -> str | None:
    for (doc, lang, marker), test in COVERED.items():
        if block.doc == doc and block.lang == lang and marker in block.body:
            return test
    return None


def to_run(lang: str, tag: str = "") -> list[Block]:
    return [b for b in all_blocks()
            if b.lang == lang and b.tag == tag and covered_by(b) is None]


def test_every_block_says_what_it_is():
    bad = [f"{b}: fence without an info string (```text if it is not meant to run)"
           for b in all_blocks() if not b.lang]
    bad += [f"{b}: unknown tag '{b.tag}' on a {b.lang} block" for b in all_blocks()
            if b.lang in EXECUTED and b.tag and b.tag.split()[0] not in OWN_TEST_TAGS | {"api"}]
    assert not bad, "\n".join(bad)


def test_covered_blocks_still_exist():
    for (doc, lang, marker), test in COVERED.items():
        assert any(b.doc == doc and b.lang == lang and marker in b.body for b in all_blocks()), \
            f"COVERED names a {lang} block of {doc} containing {marker!r} that is gone"
        assert (ROOT / test).is_file()


# --- yaml: graphs ---------------------------------------------------------------------------

def complete_graph(body: str) -> str:
    """A fragment of a graph made whole: `name:` and `nodes:` added where missing."""
    if re.match(r"\s+- ", body):
        body = "nodes:\n" + body
    if not re.search(r"^name:", body, re.M):
        body = "name: example\n" + body
    return body


def write_named_files(folder: Path, graph: dict) -> None:
    """The files a graph names, each created minimally so that validation can read it."""
    for node in graph["nodes"]:
        params = node.get("params") or {}
        if node.get("kind") == "rules":
            outputs = sorted({w.split("/", 1)[1] for other in graph["nodes"]
                              for w in _commands(other) if w.split("/")[0] == node["id"]})
            trigger = next(iter(node.get("inputs") or {"tick": None}))
            actions = "".join(f"      - command: {o}\n        args: {{}}\n" for o in outputs)
            actions = actions or "      - log: example\n"
            (folder / params["rules"]).write_text(
                f"rules:\n  - id: example\n    trigger: {{message: {trigger}}}\n"
                f"    actions:\n{actions}")
        if "run" in node and node["run"].endswith(".py"):
            path = folder / node["run"]
            path.parent.mkdir(parents=True, exist_ok=True)
            inputs = {name: "anything" for name in node.get("inputs") or {}}
            path.write_text("from iotrt.node import NodeSpec\n\n"
                            f"SPEC = NodeSpec(inputs={inputs!r})\n\n\n"
                            "def main(node):\n    for _ in node:\n        pass\n")


def _commands(node: dict) -> list[str]:
    wired = node.get("commands") or {}
    out = []
    for value in wired.values():
        out += value if isinstance(value, list) else [value]
    return out


@pytest.mark.parametrize("block", to_run("yaml"), ids=str)
def test_yaml_graph_is_valid(block, tmp_path, monkeypatch, capsys):
    text = complete_graph(block.body)
    (tmp_path / "graph.yaml").write_text(text)
    write_named_files(tmp_path, yaml.safe_load(text))
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IOTRT_RUNTIME_DIR", "/tmp/iotrt-docs")
    monkeypatch.setenv("IOTRT_STATE_DIR", str(tmp_path / "state"))
    status = cli.main(["validate", str(tmp_path / "graph.yaml")])
    assert status == 0, f"{block}: the graph example is invalid:\n{capsys.readouterr().err}"


# --- python ---------------------------------------------------------------------------------

@pytest.mark.parametrize("block", to_run("python"), ids=str)
def test_python_block_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block.body, str(block), "exec"), {"__name__": "doc_example"})


@pytest.mark.parametrize("block", to_run("python", "api"), ids=str)
def test_api_listing_imports_exist(block):
    imports = re.findall(r"^from iotrt[\w.]* import (?:\([^)]*\)|[^\n#]*)", block.body, re.M)
    assert imports, f"{block}: a `python api` block names its module with a from-import"
    for line in imports:
        exec(line, {})


# --- sh: command lines ----------------------------------------------------------------------

def commands(block: Block) -> list[list[str]]:
    """Each simple command of a sh block, as argv, without `sudo [-u USER]` and `env NAME=...`."""
    text = block.body.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        tokens = shlex.split(line, comments=True)
        cmd: list[str] = []
        for tok in tokens + ["&&"]:
            if tok in ("&&", "|", ";", "||"):
                while cmd and cmd[0] == "sudo":
                    cmd = cmd[3:] if cmd[1:2] == ["-u"] else cmd[1:]
                if cmd and cmd[0] == "env":      # `env NAME=value ... program`
                    cmd = cmd[1:]
                    while cmd and re.match(r"[A-Za-z_]\w*=", cmd[0]):
                        cmd = cmd[1:]
                if cmd:
                    out.append(cmd)
                cmd = []
            elif tok != ">" and not (cmd and cmd[-1] == ">"):
                cmd.append(tok)
    return out


def verb_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser `iotrt` builds for argv's verb (for `rules`, its action's sub-parser)."""
    parser = argparse.ArgumentParser(prog=f"iotrt {argv[0]}")
    cli._load(argv[0]).add_arguments(parser)
    if parser._subparsers and len(argv) > 1:
        parser = parser._subparsers._group_actions[0].choices.get(argv[1], parser)
    return parser


def check_iotrt(block: Block, argv: list[str]) -> None:
    where = f"{block}: `iotrt {' '.join(argv)}`"
    assert argv and argv[0] in cli.VERBS, f"{where}: no such verb"
    parser = argparse.ArgumentParser(prog=f"iotrt {argv[0]}")
    cli._load(argv[0]).add_arguments(parser)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: not accepted by its parser: {err.getvalue().strip()}")


def resolve(block: Block, path: str) -> str:
    for candidate in (ROOT / path, ROOT / "configs" / Path(path).name):
        if candidate.exists():
            return str(candidate)
    pytest.fail(f"{block}: {path} is neither in the repository nor in configs/")


def run_offline(block: Block, argv: list[str], tmp_path: Path, capsys) -> None:
    """Run an offline verb for real: inputs from the repository, outputs into tmp_path."""
    options = verb_parser(argv)._option_string_actions
    head = 2 if argv[0] == "rules" else 1  # the verb, and the action of `rules`
    real, i = argv[:head], head
    while i < len(argv):
        arg = argv[i]
        action = options.get(arg)
        if action is None:  # a positional: a file to read
            real.append(resolve(block, arg))
        elif action.nargs == 0:
            real.append(arg)
        else:
            value = argv[i + 1]
            if action.dest == "output":
                value = str(tmp_path / Path(value).name)
            elif action.dest == "python":  # the interpreter on the device: here, this one
                value = sys.executable
            real += [arg, value]
            i += 1
        i += 1
    status = cli.main(real)
    assert status == 0, f"{block}: `iotrt {' '.join(argv)}` failed:\n{capsys.readouterr()}"
    written = [real[i + 1] for i, arg in enumerate(real) if options.get(arg, None)
               and options[arg].dest == "output"]
    assert all(Path(path).is_file() for path in written), f"{block}: {written} not written"


SH_BLOCKS = to_run("sh")


@pytest.mark.parametrize("block", SH_BLOCKS, ids=str)
def test_sh_commands(block, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IOTRT_RUNTIME_DIR", "/tmp/iotrt-docs")
    monkeypatch.setenv("IOTRT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    for argv in commands(block):
        program = argv[0]
        if Path(program).name == "iotrt":
            check_iotrt(block, argv[1:])
            verb = " ".join(argv[1:3]) if argv[1] == "rules" else argv[1]
            if verb in OFFLINE_VERBS:
                run_offline(block, argv[1:], tmp_path, capsys)
        elif Path(program).name == "pip" and "install" in argv:
            for extras in re.findall(r"\[([\w,-]+)\]", " ".join(argv)):
                unknown = set(extras.split(",")) - EXTRAS
                assert not unknown, f"{block}: pyproject.toml has no extra {unknown}"
        elif program.endswith("deploy/install.sh"):
            usage = (ROOT / "deploy" / "install.sh").read_text().split("set -eu")[0]
            for word in argv[1:]:
                if word in ("install", "upgrade", "uninstall") or word.startswith("-"):
                    assert f"install.sh {word}" in usage or f"[{word}]" in usage, \
                        f"{block}: install.sh has no {word}"
        else:
            assert program in OTHER_PROGRAMS, f"{block}: unknown program {program}"


def test_sh_blocks_are_found():
    assert len(SH_BLOCKS) >= 5


def test_readme_verb_table_lists_every_verb():
    readme = (ROOT / "README.md").read_text()
    listed = re.findall(r"^\| `iotrt (\w+)[^`]*` \|", readme, re.M)
    assert sorted(set(listed)) == sorted(cli.VERBS), "README's verb table vs iotrt.cli.VERBS"


def test_readme_lists_every_extra():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install extras")[1].split("\n## ")[0]
    assert set(re.findall(r"`\[(\w+)\]`", section)) == EXTRAS
