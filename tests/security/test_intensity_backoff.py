"""Issue 13 item 3 (supervisor part): a node that crash-loops while its backoff grows must still
reach the restart intensity limit. Measured on wall time, 5 restarts never fit a 60 s window
once the delays grow (a node that runs 10 s and crashes fails at 10, 20.5, 31.5, 43.5, 57.5,
75.5, 101.5 ...: never 5 in any 60 s), so the graph never gave up and systemd never escalated."""

from __future__ import annotations

from graphrun import env, graph_file, up  # noqa: F401 (pytest fixtures)

from iotrt.states import Backoff, Exited, GiveUp, Intensity, Ready, Slot, Spawned, Start, State, TimePassed, transition


def test_crash_loop_with_growing_backoff_reaches_the_intensity_limit():
    n = Slot("rules", backoff=Backoff(initial_s=0.5, max_s=30.0, factor=2.0, reset_s=30.0),
             intensity=Intensity(restarts=5, window_s=60.0))
    now, pid = 0.0, 1
    transition(n, Start(), now)
    for _ in range(30):                      # 30 crashes: far past any limit
        transition(n, Spawned(pid), now)
        now += 8.0                           # a slow start-up (imports, model) ...
        transition(n, Ready(pid), now)
        now += 2.0                           # ... then it crashes
        actions = transition(n, Exited(pid, 1), now)
        if n.state == State.FAILED:
            assert isinstance(actions[0], GiveUp)
            break
        now = n.deadline
        transition(n, TimePassed(), now)           # BACKOFF -> STARTING
        pid += 1
    assert n.state == State.FAILED, "never gave up on a crash loop"
    assert pid == 6                          # the 6th failure: 5 restarts in 50 s of trying


def test_a_real_crash_loop_with_long_backoff_makes_the_graph_give_up(graph_file, up, tmp_path):
    """Backoff 5 s then 10 s (past the 8 s window) between crashes 0.5 s after ready."""
    marker = tmp_path / "c.pids"
    g = graph_file(f"""
        name: crashy
        supervisor:
          backoff: {{initial_s: 5, factor: 2, max_s: 30}}
          intensity: {{restarts: 2, window_s: 8}}
        nodes:
          - id: c
            run: {{node}}
            params: {{behaviour: crash, after_s: 0.5, marker: {marker}}}
    """)
    u = up(g)
    assert u.wait_exit(timeout=45) == 1
    assert "gave up after 2 restarts in 8s" in u.text
    assert len(marker.read_text().splitlines()) == 3
