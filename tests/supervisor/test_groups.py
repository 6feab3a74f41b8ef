"""Process groups under the real supervisor: nodes sharing `process:` run as threads of one OS
process; the process is the unit of restart, heartbeats stay per node, and safety-critical
nodes are refused in a group at file:line."""

from __future__ import annotations

import time

import pytest

from iotrt.control import call
from iotrt.graph import GraphError, load_graph


def _ps(graph, env) -> dict:
    return call(load_graph(graph, environ=env).control_address, "ps")


def test_a_crash_in_a_group_restarts_its_process_and_the_rest_of_the_graph_runs_on(
        graph_file, up, env, tmp_path, h):
    ma, mb, mc = (tmp_path / f"{n}.pids" for n in "abc")
    g = graph_file(f"""
        name: grouped
        supervisor: {{heartbeat_s: 0.2, backoff: {{initial_s: 0.1}}}}
        nodes:
          - id: a
            run: {{node}}
            process: pair
            params: {{behaviour: crash, after_s: 1.0, marker: {ma}}}
          - id: b
            run: {{node}}
            process: pair
            inputs: {{in: a/out}}
            params: {{marker: {mb}}}
          - id: c
            run: {{node}}
            inputs: {{in: b/out}}
            params: {{marker: {mc}}}
    """)
    up(g)
    h.wait_for(lambda: len(h.marker_pids(ma)) >= 2 and len(h.marker_pids(mb)) >= 2, 30,
               "b restarted with a's crash")
    assert h.marker_pids(ma)[:2] == h.marker_pids(mb)[:2]      # one process, both times
    assert len(h.marker_pids(mc)) == 1                         # c was never touched
    reply = h.wait_for(lambda: (r := _ps(g, env)) and r["processes"][0]["state"] == "running"
                       and r, 20, "the group running again")
    procs = {p["process"]: p for p in reply["processes"]}
    assert procs["pair"]["nodes"] == ["a", "b"] and procs["pair"]["restarts"] >= 1
    rows = {r["node"]: r for r in reply["nodes"]}
    assert rows["a"]["pid"] == rows["b"]["pid"] == procs["pair"]["pid"] != rows["c"]["pid"]
    # c keeps receiving from b, across b's restart (its input rate recovers)
    h.wait_for(lambda: {r["node"]: r for r in _ps(g, env)["nodes"]}["c"]["in_per_s"] > 5, 20,
               "c's input from the restarted group")


def test_a_hung_node_in_a_group_is_found_by_its_own_heartbeat(graph_file, up, tmp_path, h):
    ma, mb = tmp_path / "a.pids", tmp_path / "b.pids"
    g = graph_file(f"""
        name: hung
        supervisor: {{heartbeat_s: 0.2, liveness_s: 1.5, stop_grace_s: 1, backoff: {{initial_s: 0.1}}}}
        nodes:
          - id: a
            run: {{node}}
            process: pair
            params: {{marker: {ma}}}
          - id: b
            run: {{node}}
            process: pair
            params: {{behaviour: hang, after_s: 0.5, marker: {mb}}}
    """)
    u = up(g)
    u.wait_log("no heartbeat from node b for 1.5s", timeout=30)
    h.wait_for(lambda: len(h.marker_pids(ma)) >= 2, 20, "the group restarted, a with it")


def test_grouping_a_safety_critical_node_is_refused_at_its_line(graph_file):
    g = graph_file("""
        name: badgroup
        nodes:
          - id: door
            kind: lock
            process: action
          - id: bell
            kind: log
            process: action
    """)
    with pytest.raises(GraphError) as err:
        load_graph(g)
    (issue,) = err.value.issues
    assert issue.line == 6 and "safety-critical" in issue.message and "'door'" in issue.message


def test_per_process_settings_must_agree_within_a_group(graph_file):
    g = graph_file("""
        name: disagree
        nodes:
          - id: a
            run: {node}
            process: p
            nice: 5
          - id: b
            run: {node}
            process: p
            nice: 6
    """)
    with pytest.raises(GraphError, match="nice differs from node 'a' in the same process 'p'"):
        load_graph(g)


def test_a_node_that_returns_by_itself_leaves_its_group_running(graph_file, up, env, tmp_path, h):
    """A node with nothing to do (a bridge with no broker configured) just ends: the others in
    its process run on, and the supervisor stops expecting its heartbeats."""
    ma = tmp_path / "a.pids"
    g = graph_file(f"""
        name: early
        supervisor: {{heartbeat_s: 0.2, liveness_s: 1.0, backoff: {{initial_s: 0.1}}}}
        nodes:
          - id: a
            run: {{node}}
            process: pair
            params: {{marker: {ma}}}
          - id: b
            run: {{node}}
            process: pair
            params: {{behaviour: exit, after_s: 0.3}}
    """)
    u = up(g)
    u.wait_log("node b is done (returned by itself); its process runs on")
    t0 = time.monotonic()
    h.wait_for(lambda: time.monotonic() - t0 > 3.0, 5, "three liveness periods")
    (pair,) = _ps(g, env)["processes"]
    assert pair["state"] == "running" and pair["restarts"] == 0
    assert len(h.marker_pids(ma)) == 1
