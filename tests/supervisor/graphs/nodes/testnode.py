"""A node for the supervisor's tests: it runs, crashes, hangs, starts slowly, ignores SIGTERM or
logs a lot (chatty), as its `behaviour` param says. Each start appends "pid start_time spawn_time"
to the `marker` file (monotonic seconds: once running, and when the process was created), so a
test can see every incarnation and check that none outlives the supervisor."""

import os
import signal
import sys
import time

from iotrt import Node
from iotrt.spec import NodeSpec, Param

BEHAVIOURS = ("run", "crash", "exit", "hang", "slow", "stubborn", "chatty")

SPEC = NodeSpec(
    doc="test node",
    inputs={"in": "anything"},
    outputs={"out": "a counter, every period_s"},
    params=[
        Param("behaviour", str, "run", "what to do", choices=BEHAVIOURS),
        Param("after_s", float, 0.3, "crash/exit/hang this long after ready; slow: start-up time"),
        Param("exit_code", int, 3, "the code 'crash' exits with"),
        Param("period_s", float, 0.05, "publish period"),
        Param("marker", str, "", "file to append 'pid start spawn' to at each start"),
    ],
)


def spawned_at() -> float:
    """When this process was created, on the monotonic clock (/proc's start time: 10 ms ticks
    since boot), so a test can leave this start-up's length out of what it measures."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])   # field 22, starttime
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.monotonic() - age


def main(node: Node) -> None:
    p = node.params
    if p["marker"]:
        with open(p["marker"], "a") as f:
            f.write(f"{os.getpid()} {time.monotonic():.4f} {spawned_at():.4f}\n")
    if p["behaviour"] == "slow":
        time.sleep(p["after_s"])            # a long model load: no heartbeat needed yet
    if p["behaviour"] == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    node.ready()
    node.timer("tick", p["period_s"])
    start = time.monotonic()
    count = 0
    for event in node:
        if event.kind != "timer":
            continue
        node.publish("out", {"n": count})
        count += 1
        if p["behaviour"] == "chatty":        # a node that logs a lot: 4 KB per tick
            print(f"chatter {count} " + "x" * 4000, flush=True)
        if time.monotonic() - start < p["after_s"]:
            continue
        if p["behaviour"] == "crash":
            print(f"crashing on purpose with code {p['exit_code']}", file=sys.stderr)
            sys.exit(p["exit_code"])
        if p["behaviour"] == "exit":
            return
        if p["behaviour"] == "hang":
            while True:                     # stuck in user code: heartbeats stop
                time.sleep(1)


if __name__ == "__main__":
    main(Node())
