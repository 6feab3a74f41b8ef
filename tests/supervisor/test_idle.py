"""Idle means idle (issue 12): a graph of 16 idle nodes in 4 process groups, supervisor included,
uses at most 1 % of one core over 10 s, measured from /proc. Heartbeats (1 s) are all there is:
no node and no supervisor loop polls on a short timer."""

from __future__ import annotations

import os
from pathlib import Path

IDLE = Path(__file__).parent / "graphs" / "nodes" / "idle.py"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of a process from /proc/PID/stat, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def test_sixteen_idle_nodes_in_four_groups_use_under_one_percent_of_a_core(
        graph_file, up, env, h):
    nodes = "\n".join(f"""
          - id: n{i}
            run: {IDLE}
            process: g{i % 4}"""
                      for i in range(16))
    g = graph_file("name: idle\nnodes:" + nodes)
    u = up(g)
    u.wait_log("all 16 nodes up", timeout=60)
    from iotrt.control import call
    from iotrt.graph import load_graph
    reply = call(load_graph(g, environ=env).control_address, "ps")
    pids = [u.proc.pid] + [p["pid"] for p in reply["processes"]]
    assert len(pids) == 5
    before = {pid: cpu_s(pid) for pid in pids}
    t0 = os.times().elapsed
    h.wait_for(lambda: os.times().elapsed - t0 >= 10.0, 15, "10 s of idling", poll=0.5)
    wall = os.times().elapsed - t0
    used = sum(cpu_s(pid) - before[pid] for pid in pids)
    assert used / wall <= 0.01, f"{100 * used / wall:.2f} % of one core while idle"
