"""Idle means idle (issue 12): a graph of 16 idle nodes in 4 process groups, supervisor included,
uses at most 1 % of one core over 10 s (the quietest of up to six windows), measured from
/proc. Heartbeats (1 s) are all there is: no node and no supervisor loop polls on a short timer.

CPU time is read per thread from /proc/PID/task/TID/schedstat (nanoseconds on a CPU), not from
/proc/PID/stat: that counts 10 ms ticks, and over 5 processes its rounding alone is worth up
to 0.5 % of a core in 10 s."""

from __future__ import annotations

import os
from pathlib import Path

IDLE = Path(__file__).parent / "graphs" / "nodes" / "idle.py"


def cpu_ns(pid: int) -> dict[int, int]:
    """Nanoseconds each thread of a process has run, by thread id."""
    return {int(task.name): int((task / "schedstat").read_text().split()[0])
            for task in Path(f"/proc/{pid}/task").iterdir()}


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
    # On a shared machine other programs evict the graph's caches and its few wakeups cost more
    # than on a device: the graph must be able to idle within 1 % over 10 s, so up to six
    # windows are measured and the quietest counts (each one is reported on failure). Quiet, it
    # idles at about 0.45 %; a CI run once saw three windows in a row at 1.5-1.9 % while nothing
    # else of ours ran, and the same test passed alone and beside two spinning processes.
    shares = []
    for _ in range(6):
        before = {pid: cpu_ns(pid) for pid in pids}
        t0 = os.times().elapsed
        h.wait_for(lambda t0=t0: os.times().elapsed - t0 >= 10.0, 15, "10 s of idling", poll=0.5)
        wall = os.times().elapsed - t0
        after = {pid: cpu_ns(pid) for pid in pids}
        # an idle graph starts and ends no thread, so no thread's time is lost from the sum
        assert {p: set(t) for p, t in after.items()} == {p: set(t) for p, t in before.items()}
        used = sum(after[p][t] - before[p][t] for p in pids for t in before[p]) / 1e9
        shares.append(used / wall)
        if shares[-1] <= 0.01:
            break
    assert min(shares) <= 0.01, f"{[f'{100 * s:.2f} %' for s in shares]} of one core while idle"
