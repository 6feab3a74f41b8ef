"""Real processes: `iotrt up` runs test nodes; crashes, hangs and signals are real."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from iotrt.graph import load_graph
from iotrt.journal import JournalError, JournalReader


def test_crashing_node_restarts_with_growing_delays(graph_file, up, tmp_path, h):
    marker = tmp_path / "crash.pids"
    g = graph_file(f"""
        name: crashy
        supervisor:
          backoff: {{initial_s: 0.3, factor: 2, max_s: 5}}
          intensity: {{restarts: 10, window_s: 60}}
        nodes:
          - id: c
            run: {{node}}
            params: {{behaviour: crash, after_s: 0.05, marker: {marker}}}
    """)
    u = up(g)
    h.wait_for(lambda: len(h.marker_pids(marker)) >= 4, 30, "three restarts")
    delays = [float(x) for x in re.findall(r"restarting in ([\d.]+)s", u.text)]
    assert delays[:3] == [0.3, 0.6, 1.2]
    starts, spawns = h.marker_starts(marker), h.marker_spawns(marker)
    # from one incarnation running to the next one's process: its 0.05 s, its exit and the
    # backoff delay, which doubles. (Start to start would add the next start-up, which varies
    # by tenths of a second on a loaded machine: 1.02, 0.90, 1.52 s once failed the growth.)
    gaps = [b - a for a, b in zip(starts, spawns[1:])]
    for gap, delay in zip(gaps, delays):
        assert gap >= delay
    assert gaps[2] > gaps[0] + 0.5, gaps   # the growth shows in real time, not only in the log
    assert "c | crashing on purpose with code 3" in u.text    # node output, prefixed
    assert u.proc.poll() is None


def test_crashing_past_the_intensity_limit_exits_non_zero(graph_file, up, tmp_path, h):
    marker = tmp_path / "crash.pids"
    g = graph_file(f"""
        name: giveup
        supervisor:
          backoff: {{initial_s: 0.05, max_s: 0.1}}
          intensity: {{restarts: 2, window_s: 60}}
        nodes:
          - id: steady
            run: {{node}}
            params: {{marker: {tmp_path / "steady.pids"}}}
          - id: c
            run: {{node}}
            params: {{behaviour: crash, after_s: 0.05, marker: {marker}}}
    """)
    u = up(g)
    assert u.wait_exit(30) == 1
    assert "gave up after 2 restarts in 60s" in u.text
    assert len(h.marker_pids(marker)) == 3                        # first run + 2 restarts
    for pid in h.marker_pids(marker) + h.marker_pids(tmp_path / "steady.pids"):
        assert not h.alive(pid)


def test_non_critical_node_failing_for_good_leaves_the_graph_running(graph_file, up, tmp_path, h):
    g = graph_file("""
        name: degraded
        supervisor:
          backoff: {initial_s: 0.05, max_s: 0.1}
          intensity: {restarts: 1, window_s: 60}
        nodes:
          - id: steady
            run: {node}
          - id: extra
            run: {node}
            critical: false
            params: {behaviour: crash, after_s: 0.05}
    """)
    u = up(g)
    u.wait_log("extra: running -> failed")
    u.wait_log("giving up on non-critical node extra")
    u.proc.send_signal(signal.SIGTERM)
    assert u.wait_exit() == 0


def test_node_that_stops_heartbeating_is_restarted(graph_file, up, tmp_path, h):
    marker = tmp_path / "hang.pids"
    g = graph_file(f"""
        name: hangs
        supervisor: {{heartbeat_s: 0.1, liveness_s: 0.6, stop_grace_s: 0.3}}
        nodes:
          - id: h
            run: {{node}}
            params: {{behaviour: hang, after_s: 0.2, marker: {marker}}}
    """)
    u = up(g)
    u.wait_log("h: running -> stopping", timeout=20)
    assert "no heartbeat for 0.6s" in u.text
    h.wait_for(lambda: len(h.marker_pids(marker)) >= 2, 20, "a second incarnation of the hung node")
    first = h.marker_pids(marker)[0]
    h.wait_for(lambda: not h.alive(first), 5, "the hung process to be gone")
    # it sleeps in user code, so SIGTERM only sets a flag: the grace period ends in SIGKILL
    assert "killed by SIGKILL" in u.text


def _start_three(graph_file, up, tmp_path, h, stubborn: bool):
    markers = [tmp_path / f"n{i}.pids" for i in range(3)]
    last = "stubborn" if stubborn else "run"
    g = graph_file(f"""
        name: stopper
        supervisor: {{stop_grace_s: 0.5}}
        nodes:
          - id: n0
            run: {{node}}
            params: {{marker: {markers[0]}}}
          - id: n1
            run: {{node}}
            inputs: {{in: n0/out}}
            params: {{marker: {markers[1]}}}
          - id: n2
            run: {{node}}
            params: {{behaviour: {last}, marker: {markers[2]}}}
    """)
    u = up(g)
    u.wait_log("all 3 nodes up")
    pids = [h.marker_pids(m)[0] for m in markers]
    assert all(h.alive(p) for p in pids)
    return u, pids


def test_sigterm_stops_every_node_within_the_grace_period(graph_file, up, tmp_path, h):
    u, pids = _start_three(graph_file, up, tmp_path, h, stubborn=True)
    u.proc.send_signal(signal.SIGTERM)
    assert u.wait_exit(10) == 0
    assert not any(h.alive(p) for p in pids)
    assert "n2: stopping -> stopped (killed by SIGKILL)" in u.text   # ignored SIGTERM
    assert "n0: stopping -> stopped (exited with code 0)" in u.text


def test_sigkill_of_the_supervisor_leaves_no_child(graph_file, up, tmp_path, h):
    u, pids = _start_three(graph_file, up, tmp_path, h, stubborn=True)
    os.kill(u.proc.pid, signal.SIGKILL)
    u.proc.wait()
    h.wait_for(lambda: not any(h.alive(p) for p in pids), 5, "every node to die with the supervisor")


def test_slow_start_is_not_a_hang_but_a_start_timeout_is_enforced(graph_file, up, tmp_path, h):
    g = graph_file("""
        name: slow
        supervisor: {heartbeat_s: 0.1, liveness_s: 1.0, stop_grace_s: 0.2}
        nodes:
          - id: loads
            run: {node}
            params: {behaviour: slow, after_s: 2.0}   # longer than liveness_s
          - id: never
            run: {node}
            critical: false
            start_timeout_s: 0.5
            params: {behaviour: slow, after_s: 30}
    """)
    u = up(g)
    u.wait_log("loads: starting -> running")
    u.wait_log("never: starting -> stopping", timeout=10)
    assert "not ready within 0.5s" in u.text
    assert "loads: running -> stopping" not in u.text


def test_restart_after_sigkill_reuses_the_stale_sockets(graph_file, up, tmp_path, h):
    u, pids = _start_three(graph_file, up, tmp_path, h, stubborn=False)
    os.kill(u.proc.pid, signal.SIGKILL)
    u.proc.wait()
    h.wait_for(lambda: not any(h.alive(p) for p in pids), 5, "the nodes to die")
    again = up(u.graph)                      # the socket files of the killed one are still there
    again.wait_log("all 3 nodes up")


def test_second_ctrl_c_kills_at_once(graph_file, up, tmp_path, h):
    g = graph_file("""
        name: impatient
        supervisor: {stop_grace_s: 60}
        nodes:
          - id: s
            run: {node}
            params: {behaviour: stubborn}
    """)
    u = up(g)
    u.wait_log("all 1 nodes up")
    u.proc.send_signal(signal.SIGINT)
    u.wait_log("s: running -> stopping")
    u.proc.send_signal(signal.SIGINT)
    assert u.wait_exit(10) == 0              # not 60 s
    assert "second stop signal: killing every node now" in u.text


def test_each_node_process_leads_its_own_group_in_the_supervisors_session(graph_file, up,
                                                                         tmp_path, h):
    """A terminal's Ctrl-C (sent to the foreground process group) reaches only the supervisor,
    which stops the nodes in order; and the nodes stay in its session, so in its scheduling
    autogroup (CONFIG_SCHED_AUTOGROUP shares CPU equally between sessions and applies nice only
    within one: a session per node made `nice:` between nodes moot, and a graph's CPU share on
    a busy machine grow with its number of processes)."""
    ma, mb = tmp_path / "a.pids", tmp_path / "b.pids"
    g = graph_file(f"""
        name: sessions
        nodes:
          - id: a
            run: {{node}}
            params: {{marker: {ma}}}
          - id: b
            run: {{node}}
            nice: 5
            params: {{marker: {mb}}}
    """)
    u = up(g)
    pids = h.wait_for(lambda: (p := h.marker_pids(ma) + h.marker_pids(mb)) and len(p) == 2
                      and p, 30, "both nodes started")
    for pid in pids:
        assert os.getpgid(pid) == pid != u.proc.pid
        assert os.getsid(pid) == os.getsid(u.proc.pid)
    assert os.getpriority(os.PRIO_PROCESS, pids[1]) == 5


def test_graph_whose_nodes_all_finish_exits_by_itself(graph_file, up, h):
    g = graph_file("""
        name: oneshot
        nodes:
          - id: job
            run: {node}
            params: {behaviour: exit, after_s: 0.1}
          - id: other
            run: {node}
            restart: never
            critical: false
            params: {behaviour: exit, after_s: 0.2}
    """)
    u = up(g)
    assert u.wait_exit(20) == 0
    assert "job: running -> exited (exited with code 0)" in u.text
    assert "every node has ended; nothing left to supervise" in u.text


def test_supervisor_survives_losing_its_own_output(graph_file, env, tmp_path, h):
    """journald restarting (or `iotrt up | head`) closes our stdout/stderr: keep supervising."""
    g = graph_file("""
        name: mute
        supervisor: {backoff: {initial_s: 0.1}, intensity: {restarts: 100}}
        nodes:
          - id: a
            run: {node}
            params: {behaviour: crash, after_s: 0.1}
    """)
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "iotrt", "up", str(g)], env=env,
                            stdout=w, stderr=w)
    os.close(w)
    os.close(r)                              # nobody reads the supervisor's output any more
    try:
        journal = load_graph(g, environ=env).journal_path

        def restarts():
            try:
                with JournalReader(journal) as reader:
                    return sum(e.fields["state"] == "backoff" for e in reader.query(kind="lifecycle"))
            except JournalError:     # not created yet
                return 0
        h.wait_for(lambda: restarts() >= 3, 30, "three crash-restarts")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()


def test_a_node_given_up_on_leaves_no_frame_ring_in_dev_shm(graph_file, up, tmp_path, h):
    framer = Path(__file__).parent / "graphs" / "nodes" / "framer.py"
    marker = tmp_path / "segments"
    g = graph_file(f"""
        name: shmleak
        nodes:
          - id: steady
            run: {{node}}
          - id: cam
            run: {framer}
            restart: never
            critical: false
            params: {{marker: {marker}}}
    """)
    u = up(g)
    u.wait_log("cam: running -> failed")
    segments = marker.read_text().split()
    assert segments, "the node should have had a frame ring when it died"
    h.wait_for(lambda: not any(os.path.exists(f"/dev/shm/{s}") for s in segments), 5.0,
               f"the dead node's segments {segments} to be removed")
    u.proc.send_signal(signal.SIGTERM)
    assert u.wait_exit() == 0


def test_a_nice_the_supervisor_may_not_set_is_a_warning_not_a_restart_loop(graph_file, up, h):
    """Without CAP_SYS_NICE (any user but root) a negative `nice` cannot be applied: the node
    runs at the default priority with a warning, instead of each start failing."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed (apt-get install util-linux)")
    g = graph_file("""
        name: nicer
        nodes:
          - id: n
            run: {node}
            nice: -5
    """)
    no_nice = ("setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", "--")
    u = up(g, prefix=no_nice)
    u.wait_log("all 1 nodes up", timeout=30)
    assert "n: cannot set nice -5 without CAP_SYS_NICE; running at default" in u.text
    assert u.text.count("n: stopped -> starting pid") == 1      # started once, not again
