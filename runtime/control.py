"""A running supervisor's control socket (`iotrt ps/topics/down/reload`): the client side, and
the pieces the supervisor builds its replies from (message rates, CPU and memory, topics).

The supervisor answers on a Rep0 socket `ctl` in the graph's runtime folder (private to the
service user). A control request is a msgpack map `{"cmd": "ps" | "topics" | "stop" | "reload",
...}` (the key is `REQUEST_KEY`; "cmd" on the wire, as every release has sent it); the reply is a
map with `"ok"` and, when not ok, `"error"`. The supervisor dispatches them in
`Supervisor._control_handlers`.

Running graphs are found by their control sockets in the usual runtime roots
(`running_graphs`); the command line's choice of graph (a file, a name, or the only running
one) is iotrt.verbs._graph. This module does not import the graph loader, so built-in nodes
that ask the supervisor (the web page, the Home Assistant bridge) can use it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pynng

from iotrt.bus import recv_bytes
from iotrt.codec import INT64_MAX, DecodeError, pack, unpack
from iotrt.config import CONTROL_NAME, ENV_RUNTIME_DIR, SYSTEM_RUNTIME_ROOT, named_runtime_roots
from iotrt.errors import SupervisionError
from iotrt.rundir import default_runtime_root
from iotrt.states import Slot

if TYPE_CHECKING:   # the graph model is only read here, never built: no import at run time
    from iotrt.graphmodel import Graph, NodeDef

# The key of a control request's name. "cmd" on the wire (every release has sent it; a newer
# `iotrt down` must still stop a supervisor started before an upgrade): a control request is
# not an actuator command (iotrt.command).
REQUEST_KEY = "cmd"


class ControlError(SupervisionError, RuntimeError):
    """No supervisor answers, or it refused the request."""


def runtime_roots(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where running graphs may be: ours first, then the system service's, then the other
    roots the environment names (iotrt.config).

    IOTRT_RUNTIME_DIR names the one root to look in: a user (or a test) who set it means that
    graph, and must never be answered by a graph of the same name under another root."""
    if environ.get(ENV_RUNTIME_DIR):
        return named_runtime_roots(environ)
    candidates = [default_runtime_root(environ), SYSTEM_RUNTIME_ROOT, *named_runtime_roots(environ)]
    out: list[Path] = []
    for c in candidates:
        if c not in out:
            out.append(c)
    return out


def running_graphs(environ: Mapping[str, str] = os.environ) -> dict[str, Path]:
    """graph name -> its control socket path, for every control socket we can see."""
    found: dict[str, Path] = {}
    for root in runtime_roots(environ):
        try:
            entries = sorted(root.iterdir())
        except OSError:       # missing, or another user's private folder
            continue
        for d in entries:
            ctl = d / CONTROL_NAME
            if d.name not in found and ctl.exists():
                found[d.name] = ctl
    return found


def call(address: str, request: str, timeout_s: float = 3.0, **fields: Any) -> dict:
    """Send the control request `request` ("ps", "topics", "stop", "reload") with `fields`
    to the supervisor at `address`; return its reply, or raise ControlError when nobody
    answers or the reply is not ok."""
    with pynng.Req0(recv_timeout=int(timeout_s * 1000), send_timeout=int(timeout_s * 1000)) as sock:
        try:
            sock.dial(address, block=True)
        except pynng.NNGException as exc:
            raise ControlError(f"no supervisor answers at {address} ({exc}); is the graph running?") from exc
        try:
            sock.send(pack({REQUEST_KEY: request, **fields}))
            reply = unpack(recv_bytes(sock))
        except pynng.Timeout as exc:
            raise ControlError(f"the supervisor at {address} did not answer within {timeout_s:g}s") from exc
        except DecodeError as exc:
            raise ControlError(f"unreadable reply from {address}: {exc}") from exc
    if not isinstance(reply, dict):
        raise ControlError(f"unreadable reply from {address}: {reply!r:.80}")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "the supervisor refused the request")))
    return reply


# -- the supervisor's side -----------------------------------------------------------------------

@dataclass
class Rates:
    """Message counters from a node's last two heartbeats, for msgs/s in `iotrt ps`."""

    t: float = 0.0
    stats: dict = field(default_factory=dict)
    in_rate: float = 0.0
    out_rate: float = 0.0
    drops: int = 0

    def inputs(self) -> dict[str, dict[str, int]]:
        """Per input: its counters from the last heartbeat (what is not a count reads 0)."""
        values = self.stats.get("in")
        if not isinstance(values, dict):
            return {}
        return {str(name)[:64]: {k: min(max(v.get(k), 0), INT64_MAX) if type(v.get(k)) is int else 0
                                 for k in ("msgs", "drops", "bad")}
                for name, v in values.items() if isinstance(v, dict)}

    def update(self, now: float, stats: dict) -> None:
        if self.stats and now > self.t:
            dt, prev = now - self.t, self.stats
            self.in_rate = max(0.0, (_total(stats, "in", "msgs") - _total(prev, "in", "msgs")) / dt)
            self.out_rate = max(0.0, (_total(stats, "out", "msgs") - _total(prev, "out", "msgs")) / dt)
        self.drops = _total(stats, "in", "drops")
        self.t, self.stats = now, stats


def _total(stats: dict, section: str, key: str) -> int:
    """Sum of one counter over a heartbeat's ports; what is not a count (it came from another
    process) counts as 0."""
    values = stats.get(section)
    if not isinstance(values, dict):
        return 0
    # every port counts (a recorder may have hundreds); a heartbeat's size (1 MiB) bounds the work
    total = sum(v[key] for v in values.values()
                if isinstance(v, dict) and type(v.get(key)) is int and v[key] >= 0)
    return min(total, INT64_MAX)   # a reply must stay encodable: the sum of 2^64-1s is not


def pss_bytes(pid: int) -> int | None:
    """Proportional set size (shared pages divided among their sharers) from
    /proc/PID/smaps_rollup: what adding up per-process memory should use, since every node
    process maps the same interpreter and libraries. None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime + stime, start time), in clock ticks, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()   # the name may hold spaces and ")"
    return int(fields[11]) + int(fields[12]), int(fields[19])


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


class Usage:
    """CPU % (since the previous `iotrt ps`), RSS and PSS of node processes, from /proc (no
    psutil: the supervisor stays small)."""

    def __init__(self):
        self._last: dict[int, tuple[float, int]] = {}   # pid -> (when, cpu ticks)

    def sample(self, pid: int | None) -> tuple[float | None, int | None, int | None]:
        """(CPU %, RSS, PSS) of `pid`; Nones when it is not there."""
        if pid is None:
            return None, None, None
        now = time.monotonic()
        try:
            ticks, start = _cpu_ticks(pid)
            rss = _rss_bytes(pid)
            with open("/proc/uptime", "rb") as f:
                uptime = float(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None, None, None
        last = self._last.get(pid)
        self._last[pid] = (now, ticks)
        if last is None:     # first time: the average over its life so far
            age = max(1e-3, uptime - start / TICKS)
            cpu = 100.0 * ticks / TICKS / age
        else:
            cpu = 100.0 * (ticks - last[1]) / TICKS / max(1e-3, now - last[0])
        return cpu, rss, pss_bytes(pid)

    def forget(self, pid: int) -> None:
        self._last.pop(pid, None)


def process_row(slot: Slot, usage: Usage, now: float) -> dict[str, Any]:
    """One OS process (a node alone or a process group) for `iotrt ps`."""
    cpu, rss, pss = usage.sample(slot.pid)
    return {
        "process": slot.id, "nodes": list(slot.members), "state": slot.state.value,
        "pid": slot.pid, "restarts": slot.restarts,
        "uptime_s": (now - slot.running_since) if slot.running_since is not None else None,
        "cpu_pct": cpu, "rss_bytes": rss, "pss_bytes": pss, "reason": slot.reason,
    }


def ps_row(n: NodeDef, slot: Slot, rates: Rates, now: float) -> dict[str, Any]:
    """One node for `iotrt ps`: its process's state, its own message rates."""
    return {
        "node": n.id, "kind": n.kind or n.target, "process": slot.id, "state": slot.state.value,
        "pid": slot.pid, "restarts": slot.restarts, "critical": n.critical,
        "uptime_s": (now - slot.running_since) if slot.running_since is not None else None,
        "in_per_s": rates.in_rate, "out_per_s": rates.out_rate, "drops": rates.drops,
        "inputs": rates.inputs(), "reason": slot.reason,
        "reloadable": n.spec is not None and n.spec.reloadable,   # answers `iotrt reload`
    }


def topics_table(graph: Graph) -> dict[str, dict[str, Any]]:
    """topic -> {address, subscribers: ["node.input", ...]}."""
    topics: dict[str, dict[str, Any]] = {
        t: {"address": a, "subscribers": []} for t, a in graph.topics().items()}
    for n in graph.nodes.values():
        for name, wire in n.inputs.items():
            topics[wire.topic]["subscribers"].append(f"{n.id}.{name}")
    return topics
