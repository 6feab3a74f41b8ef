"""Playing systemd: a NOTIFY_SOCKET the supervisor reports to, and the unit file it writes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import iotrt.deploy
from iotrt.config import THREAD_ENV
from iotrt.graph import load_graph
from iotrt.verbs.unit import render


class FakeSystemd:
    """Binds a datagram socket like systemd's notify socket; records (time, message)."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def times(self, message: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == message]

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    fake = FakeSystemd(tmp_path / "notify")
    yield fake
    fake.close()


CRASH_LOOP = """
    name: {name}
    supervisor:
      critical_down_s: 0.8
      backoff: {{initial_s: 2.5, max_s: 2.5}}
      intensity: {{restarts: 10, window_s: 60}}
    nodes:
      - id: steady
        run: {{node}}
      - id: flaky
        run: {{node}}
        critical: {critical}
        params: {{behaviour: crash, after_s: 0.4}}
"""


def _run(graph_file, up, systemd, h, critical: bool):
    """Run the crash loop until the flaky node is back up and a ping followed; return the
    supervisor, READY's time and the pings after it."""
    g = graph_file(CRASH_LOOP.format(name=f"wd{int(critical)}", critical=str(critical).lower()))
    u = up(g, NOTIFY_SOCKET=systemd.path, WATCHDOG_USEC="200000")   # ping every 0.1 s
    h.wait_for(lambda: systemd.times("READY=1"), 20, "READY=1")
    u.wait_log("flaky: starting -> running", count=2, timeout=20)   # crashed, waited, back
    back = time.monotonic()
    h.wait_for(lambda: [t for t in systemd.times("WATCHDOG=1") if t > back], 5, "a ping after")
    ready = systemd.times("READY=1")[0]
    return u, ready, [t for t in systemd.times("WATCHDOG=1") if t > ready]


def test_ready_then_watchdog_pings_stop_while_a_critical_node_is_down(graph_file, up, systemd, h):
    u, ready, pings = _run(graph_file, up, systemd, h, critical=True)
    assert len(systemd.times("READY=1")) == 1
    # pings before the start-up ended too: systemd's watchdog runs from the start
    assert systemd.times("WATCHDOG=1")[0] < ready
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    # down 2.5 s (backoff) + start-up, limit 0.8 s: the pings paused for over 1.5 s, then resumed
    assert max(gaps) > 1.5
    assert sum(g > 1.5 for g in gaps) == 1       # one pause: the one crash
    assert any(m.startswith("STATUS=unhealthy: flaky down") for _, m in systemd.messages)
    u.proc.terminate()
    assert u.wait_exit() == 0
    h.wait_for(lambda: systemd.times("STOPPING=1"), 5, "STOPPING=1")


def test_watchdog_pings_continue_while_a_non_critical_node_restarts(graph_file, up, systemd, h):
    u, ready, pings = _run(graph_file, up, systemd, h, critical=False)
    assert "flaky: running -> backoff" in u.text
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(pings) >= 10 and max(gaps) < 1.0     # vs > 2.5 s if it counted
    assert not any(m.startswith("STATUS=unhealthy") for _, m in systemd.messages)
    statuses = [m for _, m in systemd.messages if m.startswith("STATUS=")]
    assert statuses[0] == "STATUS=starting 2 nodes"
    assert "STATUS=1/2 nodes running; flaky backoff" in statuses       # for systemctl status
    assert statuses[-1] == "STATUS=2/2 nodes running"


def test_node_process_environment_affinity_and_nice(graph_file, up, systemd, tmp_path, h):
    g = graph_file("""
        name: inherit
        nodes:
          - id: n
            run: {node}
            cpus: [0]
            nice: 5
            env: {GREETING: hello}
    """)
    u = up(g, NOTIFY_SOCKET=systemd.path, JOURNAL_STREAM="8:1234")
    h.wait_for(lambda: systemd.times("READY=1"), 20, "READY=1")
    # with JOURNAL_STREAM, log lines carry their syslog priority for journald
    assert u.text.startswith("<6>iotrt.supervisor: graph inherit: 1 nodes")
    pid = int(u.text.split("n: stopped -> starting pid ")[1].split()[0])
    environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    assert not any(e.startswith((b"NOTIFY_SOCKET=", b"JOURNAL_STREAM=")) for e in environ)
    assert b"GREETING=hello" in environ
    proc = psutil.Process(pid)
    assert proc.cpu_affinity() == [0] and proc.nice() == 5
    # one node: it gets every core the supervisor may use
    threads = str(len(os.sched_getaffinity(0))).encode()
    assert set(THREAD_ENV) >= {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "OPENCV_FOR_THREADS_NUM", "IOTRT_THREADS"}
    for name in THREAD_ENV:
        assert name.encode() + b"=" + threads in environ


def test_unit_passes_systemd_analyze_verify(graph_file, tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    g = load_graph(graph_file("""
        name: door
        supervisor: {backoff: {max_s: 40}}
        nodes:
          - id: n
            run: {node}
    """))
    text = render(g, user="iotrt", python=sys.executable)
    assert "WatchdogSec=50" in text and "Type=notify" in text
    unit = tmp_path / "iotrt-door.service"
    unit.write_text(text)
    out = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    problems = [ln for ln in (out.stdout + out.stderr).splitlines() if "iotrt-door.service" in ln]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


def test_unit_command_writes_the_unit_for_a_graph(graph_file, tmp_path, capsys):
    from iotrt.cli import main as cli

    g = graph_file("""
        name: porch
        supervisor: {stop_grace_s: 3, backoff: {max_s: 20}}
        nodes:
          - id: a
            run: {node}
          - id: b
            run: {node}
            inputs: {in: a/out}
            start_timeout_s: 90
    """)
    out = tmp_path / "iotrt-porch.service"
    assert cli(["unit", str(g), "-o", str(out), "--python", "/opt/iotrt/venv/bin/python",
                "--writable", str(tmp_path)]) == 0
    text = out.read_text()
    assert f"ExecStart=/opt/iotrt/venv/bin/python -m iotrt up {g}" in text
    assert "WatchdogSec=30" in text          # backoff cap 20 s + 10 s
    # 2 dependency levels x 90 s, 2 processes x a start slot (2 s) on one CPU, + 10 s
    assert "TimeoutStartSec=194" in text
    assert "TimeoutStopSec=13" in text and "User=iotrt" in text
    assert f"ReadWritePaths={tmp_path}" in text
    assert "systemctl enable --now iotrt-porch.service" in capsys.readouterr().err


def test_install_script_parses_and_explains_itself():
    script = Path(iotrt.deploy.__file__).with_name("install.sh")
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    usage = subprocess.run(["sh", str(script), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0
    for verb in ("install GRAPH", "upgrade", "uninstall [--purge]"):
        assert verb in usage.stdout
    assert subprocess.run(["sh", str(script)], capture_output=True).returncode == 2
