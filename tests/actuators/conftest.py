"""Real processes for the actuator tests: nodes started with `python -m iotrt.launch`.

`Graph` plays the supervisor's part that these tests need, in processes of its own:
- a *journal writer* process: the single writer of journal.db, serving the "journal" command
  channel (`node.record(..., sync=True)`) and the supervisor Pull0 (ready + async records);
- node processes started exactly as the supervisor starts them (IOTRT_NODE_CONFIG env);
- commanding processes (stand-ins for a rule node) that send commands over the real
  acknowledged channel and print each ack.
Every process is killed at teardown, whatever the test did.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import Up, up_env, wait_for

from iotrt.journal import JournalReader

_JOURNAL_WRITER = textwrap.dedent("""
    import json, sys, threading
    import pynng
    from iotrt.command import CommandServer
    from iotrt.journal import Journal
    from iotrt.protocol import parse_message

    cfg = json.loads(sys.argv[1])
    journal = Journal(cfg["db"])
    server = CommandServer(cfg["journal"], name="journal")
    pull = pynng.Pull0()
    pull.listen(cfg["supervisor"])

    def node_messages():
        while True:
            msg = parse_message(pull.recv())
            if msg["type"] == "ready":
                print("ready", msg["id"], msg["pid"], flush=True)
            elif msg["type"] == "record":
                journal.write_record(msg)

    threading.Thread(target=node_messages, daemon=True).start()
    print("listening", flush=True)
    while True:
        cmd = server.recv()
        if isinstance(cmd.data, dict) and cmd.data.get("type") == "deadline":
            cmd.reply({})   # a safety deadline (the supervisor's backstop): not tested here
            continue
        cmd.reply({"event_id": journal.write_record(cmd.data)})
""")

# Sends each JSON command of argv[2:] (or, with "--every S N CMD", N times every S seconds) to
# the command server at argv[1], printing {"id", "ack", "t_ns"} per ack; then waits for stdin.
_COMMANDER = textwrap.dedent("""
    import json, sys, time, uuid
    from iotrt.command import CommandClient

    client = CommandClient(sys.argv[1], src="rule")
    args = sys.argv[2:]
    if args[0] == "--every":
        period, count, commands = float(args[1]), int(args[2]), [json.loads(args[3])] * int(args[2])
    else:
        period, commands = 0.0, [json.loads(a) for a in args]
    for data in commands:
        cid = uuid.uuid4().hex
        ack = client.call(data, timeout_s=2.0, retries=5, id=cid)
        print(json.dumps({"id": cid, "ack": ack, "t_ns": time.monotonic_ns()}), flush=True)
        if period:
            time.sleep(period)  # the command rate of a teleop client, not a wait for a result
    print("done", flush=True)
    sys.stdin.read()
""")


class Proc:
    """A child process whose stdout lines are collected by a thread."""

    def __init__(self, argv: list[str], env: dict | None = None, cwd: str | None = None) -> None:
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, timeout: float = 20.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from {self.popen.args[:3]} within {timeout} s "
                                 f"(exit status {self.popen.poll()})") from None
        self.seen.append(line)
        return line

    def wait_line(self, predicate, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(0.01, deadline - time.monotonic()))
            if predicate(line):
                return line

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM and wait: what the supervisor does on a clean shutdown."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


class Graph:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.state.mkdir()
        self.db = self.state / "journal.db"
        self.procs: list[Proc] = []
        self.configs: dict[str, dict] = {}
        self.writer: Proc | None = None
        self.start_journal_writer()

    def addr(self, name: str) -> str:
        return f"ipc://{self.root}/{name}"

    def start_journal_writer(self) -> Proc:
        cfg = {"db": str(self.db), "journal": self.addr("journal"),
               "supervisor": self.addr("sup")}
        self.writer = self._spawn([sys.executable, "-c", _JOURNAL_WRITER, json.dumps(cfg)])
        assert self.writer.next_line() == "listening"
        return self.writer

    def _spawn(self, argv: list[str], env: dict | None = None) -> Proc:
        proc = Proc(argv, env=env, cwd=str(self.root))
        self.procs.append(proc)
        return proc

    def start_node(self, node_id: str, target: str, params: dict,
                   outputs: tuple[str, ...] = ("state",)) -> Proc:
        """Start a node as the supervisor does; returns once it reported ready."""
        cfg = self.configs.setdefault(node_id, {
            "graph": "test", "id": node_id, "kind": None, "target": target, "params": params,
            "inputs": {},
            "outputs": {o: {"address": self.addr(f"{node_id}.{o}"), "topic": f"{node_id}/{o}"}
                        for o in outputs},
            "commands_in": {"commands": {"address": self.command_address(node_id)}},
            "commands_out": {},
            "supervisor": self.addr("sup"), "journal": self.addr("journal"),
            "heartbeat_s": 1.0, "runtime_dir": str(self.root), "state_dir": str(self.state),
            "log_level": "INFO"})
        env = {**os.environ, "IOTRT_NODE_CONFIG": json.dumps(cfg)}
        proc = self._spawn([sys.executable, "-m", "iotrt.launch"], env=env)
        self.writer.wait_line(lambda line: line == f"ready {node_id} {proc.pid}")
        return proc

    def command_address(self, node_id: str) -> str:
        return self.addr(f"{node_id}.cmd")

    def commander(self, node_id: str, *commands: dict, every: float | None = None,
                  count: int = 0) -> Proc:
        args = [json.dumps(c) for c in commands]
        if every is not None:
            args = ["--every", str(every), str(count), args[0]]
        return self._spawn([sys.executable, "-c", _COMMANDER, self.command_address(node_id),
                            *args])

    def journal(self, **filters) -> list:
        with JournalReader(self.db) as reader:
            return reader.query(**filters)

    def wait_journal(self, timeout: float = 10.0, **filters) -> list:
        return wait_for(lambda: self.journal(**filters) if self.db.exists() else [], timeout,
                        f"a journal event matching {filters}")

    @staticmethod
    def read_jsonl(path: Path) -> list[dict]:
        """Rows of a sim driver's record (a line cut short by a kill is skipped)."""
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]

    wait_for = staticmethod(wait_for)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()


@pytest.fixture
def graph():
    # ipc:// paths must stay under 107 bytes, so not pytest's long tmp_path.
    root = Path(tempfile.mkdtemp(prefix="iotrt-act-", dir="/tmp"))
    g = Graph(root)
    try:
        yield g
    finally:
        g.close()
        shutil.rmtree(root, ignore_errors=True)


class Supervised(Up):
    """`iotrt up GRAPH` as a real process (the supervisor engineer's code), with the graph's
    addresses and paths read back from the same graph file."""

    def __init__(self, root: Path, graph_text: str, files: dict[str, str] | None = None) -> None:
        from iotrt.graph import load_graph

        self.root = root
        for name, text in (files or {}).items():
            (root / name).write_text(textwrap.dedent(text))
        self.env = up_env(root / "run", root / "state")
        self.path = root / "graph.yaml"
        self.path.write_text(textwrap.dedent(graph_text))
        graph = load_graph(self.path, environ=self.env)  # a bad graph fails before any process
        super().__init__(self.path, self.env, root / "up.log")
        self.graph = graph  # the loaded graph, where Up keeps only its path

    def command_address(self, node_id: str) -> str:
        return self.graph.command_address(node_id, "commands")

    def journal(self, **filters) -> list:
        with JournalReader(self.graph.journal_path) as reader:
            return reader.query(**filters)


@pytest.fixture
def h():
    """Helpers for test modules (pytest's importlib mode cannot import conftest)."""
    return SimpleNamespace(read_jsonl=Graph.read_jsonl, wait_for=wait_for)


@pytest.fixture
def supervised():
    root = Path(tempfile.mkdtemp(prefix="iotrt-sup-", dir="/tmp"))
    started: list[Supervised] = []

    def start(graph_text: str, files: dict[str, str] | None = None) -> Supervised:
        s = Supervised(root, graph_text, files)
        started.append(s)
        return s
    try:
        yield start
    finally:
        for s in started:
            s.close()
        # Nodes die with their supervisor (PR_SET_PDEATHSIG); sim records name any survivor.
        for record in root.glob("state/*/*.jsonl"):
            for pid in {row["pid"] for row in Graph.read_jsonl(record)}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(root, ignore_errors=True)
