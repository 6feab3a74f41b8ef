"""The start order: processes start at once, but for a command sender, which waits for the
actuators it commands; at most one process per CPU starts at a time, and a slow starter does
not hold the others back."""

from __future__ import annotations

import os
from pathlib import Path

from iotrt.graph import load_graph
from iotrt.supervisor import start_dependencies

GRAPHS = Path(__file__).parent / "graphs"


def test_only_command_senders_wait_for_their_actuators():
    g = load_graph(GRAPHS / "door.yaml")     # cam -> faces -> rules (decider) => door (actuator)
    assert start_dependencies(g) == {"cam": set(), "faces": set(), "rules": {"door"},
                                     "door": set()}


def test_a_subscriber_starts_while_its_publisher_is_still_starting(graph_file, up):
    g = graph_file("""
        name: wave
        nodes:
          - id: pub
            run: {node}
            params: {behaviour: slow, after_s: 120}     # ready only after two minutes
            start_timeout_s: 300
          - id: sub
            run: {node}
            inputs: {in: pub/out}
    """)
    u = up(g)
    u.wait_log("sub: starting -> running", 30)
    assert "pub: starting -> running" not in u.text
    assert u.proc.poll() is None


def test_a_command_sender_starts_once_its_actuator_is_running(graph_file, up):
    # the decider comes first in the file, and the actuator takes a second to be ready
    g = graph_file(f"""
        name: cmdorder
        nodes:
          - id: dec
            run: {GRAPHS}/nodes/decider.py
            params: {{period_s: 0.2}}
          - id: act
            run: {GRAPHS}/nodes/actuator.py
            params: {{start_s: 1.0}}
            commands: {{commands: dec/lock}}
    """)
    u = up(g)
    u.wait_log("dec: starting -> running", 30)
    text = u.text
    assert text.index("act: starting -> running") < text.index("dec: stopped -> starting")


def test_slow_starters_do_not_hold_the_others_back(graph_file, up):
    # more slow starters than CPUs: each holds a start slot for START_SLOT_S at most
    slow = len(os.sched_getaffinity(0)) + 1
    nodes = "".join(f"""
          - id: slow{i}
            run: {{node}}
            params: {{behaviour: slow, after_s: 120}}
            start_timeout_s: 300""" for i in range(slow))
    g = graph_file(f"""
        name: slowstart
        nodes:{nodes}
          - id: quick
            run: {{node}}
    """)
    u = up(g)
    u.wait_log("quick: starting -> running", 60)
    assert all(f"slow{i}: stopped -> starting" in u.text for i in range(slow))
    assert "slow0: starting -> running" not in u.text
