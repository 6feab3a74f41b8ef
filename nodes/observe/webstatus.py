"""What the web node reads about the graph: the supervisor's `ps`/`topics` replies, the journal,
and the Prometheus metrics built from them.

- `Graph` calls the control socket (read-only requests only) and caches the topic table.
- `Status` is the live status page's source: while at least one page is open (`Status.watch`),
  one thread polls `ps` every `period_s` and the journal for new events, and hands both to every
  open page; with no page open it waits on a condition and costs nothing.
- `GraphCollector` is a prometheus_client collector: each scrape asks `ps` once, reads each node
  process's CPU time and memory from /proc, and counts the journal events since the last scrape
  into rule-firing and command counters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from iotrt import control
from iotrt.journal import JOURNAL_FILE, JournalError, JournalReader
from iotrt.states import State

log = logging.getLogger("iotrt.web")

BACKLOG = 50              # journal events a new page starts with
MAX_LABEL = 64            # longest label value taken from the journal
MAX_SERIES = 500          # distinct label sets per journal counter; the rest count as "other"
PS_TTL_S = 0.25           # a `ps` reply serves every request within this long
CLIENT_QUEUE = 256        # messages waiting for a slow page before it is dropped
EVENTS_PER_TICK = 50      # newest journal events sent to pages per period (the page shows 200)


class Graph:
    """The supervisor as a read-only data source."""

    def __init__(self, runtime_dir: str) -> None:
        self.address = f"ipc://{Path(runtime_dir) / control.CONTROL_NAME}"
        self._table: dict[str, dict] | None = None
        self._lock = threading.Lock()
        self._ps: dict | None = None
        self._ps_at = 0.0
        self._ps_lock = threading.Lock()

    def ps(self) -> dict:
        """The supervisor's `ps` reply, at most PS_TTL_S old: however many pages and scrapes
        ask, the supervisor answers a few times a second at most."""
        with self._ps_lock:
            now = time.monotonic()
            if self._ps is None or now - self._ps_at > PS_TTL_S:
                self._ps = control.call(self.address, "ps", timeout_s=2.0)
                self._ps_at = now
            return self._ps

    def table(self) -> dict[str, dict]:
        """topic -> {address, subscribers: ["node.input", ...]} (fixed for the graph's life,
        so asked once)."""
        with self._lock:
            if self._table is None:
                reply = control.call(self.address, "topics", timeout_s=2.0)
                self._table = {t: v for t, v in reply["topics"].items() if not t.startswith("_")}
            return self._table

    def topics(self) -> dict[str, str]:
        """topic -> address."""
        return {t: v["address"] for t, v in self.table().items()}


class JournalTail:
    """New journal events since the last call, from a read-only connection (thread-safe)."""

    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir or ".") / JOURNAL_FILE
        self._reader: JournalReader | None = None
        self._lock = threading.Lock()
        self.last_id: int | None = None

    def _open(self) -> JournalReader | None:
        if self._reader is None:
            try:
                self._reader = JournalReader(self.path)
            except JournalError as exc:
                log.debug("web: journal not readable yet: %s", exc)
        return self._reader

    def recent(self, n: int = BACKLOG) -> list[dict]:
        with self._lock:
            reader = self._open()
            try:
                return [e.to_dict() for e in reader.query(limit=n)] if reader else []
            except JournalError as exc:
                log.warning("web: %s", exc)
                return []

    def start_at_end(self) -> None:
        with self._lock:
            self._start_at_end()

    def _start_at_end(self) -> None:
        reader = self._open()
        if reader is not None and self.last_id is None:
            try:
                self.last_id = reader.last_id()
            except sqlite3.Error as exc:     # last_id() is a bare query
                log.warning("web: %s: %s", self.path, exc)

    def new(self, limit: int = 10_000) -> list[dict]:
        """Events after the last call (the first call starts at the journal's end); at most
        `limit`, the oldest first (the rest come with the next call)."""
        with self._lock:
            reader = self._open()
            if reader is None or self.last_id is None:
                self._start_at_end()
                return []
            try:
                events = reader.query(after_id=self.last_id)[:limit]
            except JournalError as exc:   # busy or damaged file: the page goes on without it
                log.warning("web: %s", exc)
                return []
            if events:
                self.last_id = events[-1].id
            return [e.to_dict() for e in events]

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()


TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def usage(pid: int | None) -> tuple[float | None, int | None, int | None]:
    """(CPU seconds, RSS, PSS) of a process from /proc (no psutil: ~1.6 MB less in the web
    node's process); Nones if it is gone."""
    if not pid:
        return None, None, None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()   # the name may hold spaces and ")"
        with open(f"/proc/{pid}/statm", "rb") as f:
            rss = int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None, None, None
    return (int(fields[11]) + int(fields[12])) / TICKS, rss, control.pss_bytes(pid)


class Status:
    """Live status for the open pages (see the module docstring)."""

    def __init__(self, graph: Graph, journal: JournalTail, period_s: float, extra,
                 decorate, guard=lambda f: f) -> None:
        self.graph, self.journal, self.period_s = graph, journal, period_s
        self._extra = extra              # () -> dict merged into each snapshot (video, latency)
        self._decorate = decorate        # event dict -> event dict (links to media files)
        self._clients: list[queue.Queue] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=guard(self._run), name="web-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def snapshot(self) -> dict[str, Any]:
        try:
            ps = self.graph.ps()
            topics = self.graph.topics()
        except control.ControlError as exc:
            return {"ok": False, "error": str(exc), **self._extra()}
        return {"ok": True, "graph": ps.get("graph"), "state": ps.get("state"),
                "uptime_s": ps.get("uptime_s"), "nodes": ps.get("nodes", []),
                "processes": ps.get("processes", []), "topics": sorted(topics), **self._extra()}

    @contextlib.contextmanager
    def watch(self) -> Iterator[queue.Queue]:
        """A queue of ("status" | "event", dict) for one open page, plus a backlog of events."""
        q: queue.Queue = queue.Queue(CLIENT_QUEUE)
        for ev in self.journal.recent(min(BACKLOG, CLIENT_QUEUE - 8)):
            q.put_nowait(("event", self._decorate(ev)))
        self.journal.start_at_end()
        with self._cond:
            self._clients.append(q)
            self._cond.notify_all()
        try:
            yield q
        finally:
            with self._cond:
                if q in self._clients:
                    self._clients.remove(q)

    def watching(self, q: queue.Queue) -> bool:
        """False once the page was let go (it stopped reading) or the node is closing."""
        with self._cond:
            return q in self._clients and not self._stop

    @property
    def watchers(self) -> int:
        with self._cond:
            return len(self._clients)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(5)
        self.journal.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._clients or self._stop)
                if self._stop:
                    return
            items = [("status", self.snapshot())]
            items += [("event", self._decorate(e)) for e in self.journal.new()[-EVENTS_PER_TICK:]]
            with self._cond:
                for q in list(self._clients):
                    for item in items:
                        try:
                            q.put_nowait(item)
                        except queue.Full:   # a page that stopped reading: let it go
                            self._clients.remove(q)
                            break
                self._cond.wait_for(lambda: self._stop, self.period_s)


def _label(v: Any) -> str:
    return str(v)[:MAX_LABEL] if v is not None else ""


class JournalCounters:
    """Counters of journal events since the web node started (bounded label sets)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, tuple[str, ...]], int] = {}

    def add(self, event: dict) -> None:
        kind, node, f = event["kind"], event["node"], event["fields"]
        if kind == "rule_fired":
            self._inc("rule_firings", (_label(f.get("rule")),))
        elif kind in ("command_sent", "command_acked") or (kind == "command_failed"
                                                            and "rule" in f):
            self._inc("rule_commands", (_label(f.get("rule")), _label(f.get("output")),
                                        kind.removeprefix("command_")))
        elif kind in ("command_applied", "command_refused", "command_failed"):
            self._inc("actuator_commands", (_label(node), kind.removeprefix("command_")))

    def _inc(self, name: str, labels: tuple[str, ...]) -> None:
        key = (name, labels)
        if key not in self.counts and sum(1 for k in self.counts if k[0] == name) >= MAX_SERIES:
            key = (name, tuple("other" for _ in labels))
        self.counts[key] = self.counts.get(key, 0) + 1

    def families(self) -> list:
        from prometheus_client.core import CounterMetricFamily  # at a scrape: webmetrics

        fams = {
            "rule_firings": CounterMetricFamily(
                "iotrt_rule_firings", "Rule firings journaled since the web node started",
                labels=["rule"]),
            "rule_commands": CounterMetricFamily(
                "iotrt_rule_commands", "Commands the rules sent, had acknowledged, or failed",
                labels=["rule", "output", "result"]),
            "actuator_commands": CounterMetricFamily(
                "iotrt_actuator_commands", "Commands actuators applied, refused or failed",
                labels=["node", "result"]),
        }
        for (name, labels), n in sorted(self.counts.items()):
            fams[name].add_metric(list(labels), n)
        return list(fams.values())


class GraphCollector:
    """The graph's metrics, read at each scrape (see the module docstring)."""

    def __init__(self, graph: Graph, journal: JournalTail) -> None:
        self.graph, self.journal = graph, journal
        self.counters = JournalCounters()
        self._lock = threading.Lock()

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily  # at a scrape: webmetrics

        up = GaugeMetricFamily("iotrt_supervisor_up", "1 if the supervisor answered this scrape")
        try:
            ps = self.graph.ps()
        except control.ControlError as exc:
            log.warning("web: /metrics without the supervisor: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        rows = ps.get("nodes", [])
        yield from self._nodes(rows)
        try:
            yield from self._topics(rows, self.graph.table())
        except control.ControlError as exc:
            log.warning("web: /metrics without the topic table: %s", exc)
        with self._lock:
            for ev in self.journal.new():
                self.counters.add(ev)
            yield from self.counters.families()

    def _nodes(self, rows: list[dict]):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # at a scrape: webmetrics

        state = GaugeMetricFamily("iotrt_node_state", "1 for the state each node is in",
                                  labels=["node", "kind", "state"])
        restarts = CounterMetricFamily("iotrt_node_restarts", "Restarts of the node",
                                       labels=["node"])
        cpu = CounterMetricFamily("iotrt_node_cpu_seconds", "CPU time of the node's process "
                                  "(nodes sharing a process report the same)",
                                  labels=["node", "process"])
        rss = GaugeMetricFamily("iotrt_node_resident_memory_bytes", "RSS of the node's process",
                                labels=["node", "process"])
        pss = GaugeMetricFamily("iotrt_node_proportional_memory_bytes",
                                "PSS of the node's process (shared pages divided among users)",
                                labels=["node", "process"])
        rate_in = GaugeMetricFamily("iotrt_node_received_messages_per_second",
                                    "Messages the node received per second (all inputs)",
                                    labels=["node"])
        rate_out = GaugeMetricFamily("iotrt_node_published_messages_per_second",
                                     "Messages the node published per second (all outputs)",
                                     labels=["node"])
        drops = CounterMetricFamily("iotrt_node_dropped_messages", "Messages lost on the "
                                    "node's inputs (latest-wins queues) since it started",
                                    labels=["node"])
        for row in rows:
            node = _label(row.get("node"))
            for s in State:
                state.add_metric([node, _label(row.get("kind")), s.value],
                                 1 if row.get("state") == s.value else 0)
            restarts.add_metric([node], row.get("restarts") or 0)
            proc = _label(row.get("process") or node)   # a process group's name, if any
            cpu_s, rss_b, pss_b = usage(row.get("pid"))
            if cpu_s is not None:
                cpu.add_metric([node, proc], cpu_s)
                rss.add_metric([node, proc], rss_b)
            if pss_b is not None:
                pss.add_metric([node, proc], pss_b)
            rate_in.add_metric([node], row.get("in_per_s") or 0.0)
            rate_out.add_metric([node], row.get("out_per_s") or 0.0)
            drops.add_metric([node], row.get("drops") or 0)
        yield from (state, restarts, cpu, rss, pss, rate_in, rate_out, drops)

    @staticmethod
    def _topics(rows: list[dict], table: dict[str, dict]):
        """Per-topic counters from each node's per-port counters (`ports` in a `ps` row, the
        heartbeat's {"in": {input: {msgs, drops}}, "out": {output: {msgs}}}) when the
        supervisor reports them; nothing otherwise."""
        from prometheus_client.core import CounterMetricFamily

        ports = {r.get("node"): r["ports"] for r in rows if isinstance(r.get("ports"), dict)}
        if not ports:
            return
        msgs = CounterMetricFamily("iotrt_topic_messages", "Messages published on the topic "
                                   "since its node started", labels=["topic"])
        drops = CounterMetricFamily("iotrt_topic_dropped_messages", "Messages of the topic a "
                                    "subscriber lost (latest-wins) since it started",
                                    labels=["topic", "subscriber"])

        def count(node: str, section: str, port: str, key: str) -> int | None:
            v = ports.get(node, {}).get(section)
            v = v.get(port) if isinstance(v, dict) else None
            n = v.get(key) if isinstance(v, dict) else None
            return n if type(n) is int and n >= 0 else None

        for topic, info in sorted(table.items()):
            node, _, output = topic.partition("/")
            if (n := count(node, "out", output, "msgs")) is not None:
                msgs.add_metric([topic], n)
            for sub in info.get("subscribers", []):
                snode, _, sinput = str(sub).partition(".")
                if (n := count(snode, "in", sinput, "drops")) is not None:
                    drops.add_metric([topic, str(sub)], n)
        yield from (msgs, drops)
