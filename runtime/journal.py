"""The event journal: what the device decided and did, on disk, surviving restarts and crashes.

One SQLite file (``journal.db`` in the graph's state directory) with one table of events. There is
exactly one writer, the supervisor: nodes send records over the protocol, so there is no
multi-writer lock contention and no node needs write access to the file. Readers (`iotrt events`)
open it read-only, which works for a user who can read but not write the database files.

Durability: WAL mode with ``synchronous=FULL`` and one transaction per event, so ``write`` returns
only once the event is on stable storage; an actuator acks a command only after that. A writer
killed at any point (even inside a transaction) leaves a consistent database holding every event
whose ``write`` returned: SQLite rolls back the unfinished transaction when the file is next opened.

Times are wall-clock nanoseconds since the Unix epoch (``time.time_ns()``): the journal outlives
boots, so the monotonic clock used for message stamps would be meaningless here.

Retention: ``max_age_s`` and ``max_bytes`` (90 days and 64 MiB unless given; None for no limit)
bound the journal; the writer prunes the oldest events now and then (see ``PRUNE_EVERY``) and
gives the freed pages back to the file system. ``max_bytes`` bounds the database *and* its WAL
file: SQLite checkpoints the WAL after an eighth of the budget and truncates it to that size,
and the database is pruned to the rest. Safety events (``SAFETY_KINDS``: what actuators did and
why) outlive the rest: size pruning deletes other events first, and they have their own
``safety_max_age_s`` (a year unless given). One record's fields are at most ``MAX_RECORD_BYTES``
of JSON: a larger value is replaced by a summary (its type, size and first characters), so one
huge record cannot evict the history.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from iotrt import errors
from iotrt.protocol import MAX_RECORD_BYTES, json_default, summarise
from iotrt.rundir import make_dirs_private

SCHEMA_VERSION = 1
JOURNAL_FILE = "journal.db"  # its name inside a graph's state directory

# Maintenance (retention) runs after this many writes or this many seconds, whichever comes first:
# often enough to bound the file, rarely enough that a write costs one fsync'd insert.
PRUNE_EVERY = 500
# Retention unless told otherwise: a device journal must not fill its SD card.
DEFAULT_MAX_AGE_S = 90 * 86400.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_SAFETY_MAX_AGE_S = 365 * 86400.0
PRUNE_INTERVAL_S = 60.0
# Event kinds that say what an actuator did and why: kept longest (see the module docstring).
SAFETY_KINDS = ("command_received", "command_applied", "command_refused", "command_failed",
                "command_unjournalable", "actuator_state")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after pruning
    t_ns   INTEGER NOT NULL,                   -- wall clock, ns since the epoch
    kind   TEXT NOT NULL,                      -- e.g. rule_fired, command_sent, command_applied
    node   TEXT NOT NULL,                      -- id of the node the event came from
    rule   TEXT,                               -- copy of fields["rule"], indexed for --rule
    fields TEXT NOT NULL                       -- JSON object
);
CREATE INDEX IF NOT EXISTS events_t_ns ON events (t_ns);
CREATE INDEX IF NOT EXISTS events_rule ON events (rule, id);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, id);
"""


class JournalError(errors.StorageError, RuntimeError):
    """The journal file cannot be opened, created, read or written."""


class BadRecord(JournalError, ValueError):
    """An event that cannot be journaled as given (it came from another process: a writer
    catching JournalError also survives a node sending nonsense)."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One event as journaled (a row of the table): what `query` and `follow` return."""

    id: int
    t_ns: int
    kind: str
    node: str
    fields: dict[str, Any]

    @property
    def rule(self) -> str | None:
        rule = self.fields.get("rule")
        return rule if isinstance(rule, str) else None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "t_ns": self.t_ns, "kind": self.kind, "node": self.node,
                "fields": self.fields}


def _encode_fields(fields: dict[str, Any]) -> str:
    if not isinstance(fields, dict):
        raise BadRecord(f"journal fields must be a dict, not {type(fields).__name__}")
    try:
        text = json.dumps(fields, default=json_default, separators=(",", ":"),
                          ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        # bytes or tuple keys, NaN-free JSON refusals, cycles: the node's record is bad, the
        # writer (the supervisor) must go on
        raise BadRecord(f"journal fields cannot be stored as JSON: {exc}") from exc
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: SQLite cannot store it, JSON escapes can
        text = json.dumps(fields, default=json_default, separators=(",", ":"))
    if len(text) > MAX_RECORD_BYTES:
        text = json.dumps(summarise(fields), default=json_default, separators=(",", ":"))
    return text


class Journal:
    """The single writer. ``Journal(path)`` creates the file (and its folder) if needed.

    Thread-safe: the supervisor may write from its command-server thread and its main loop.
    """

    def __init__(self, path: str | os.PathLike, *,
                 max_age_s: float | None = DEFAULT_MAX_AGE_S,
                 max_bytes: int | None = DEFAULT_MAX_BYTES,
                 safety_max_age_s: float | None = DEFAULT_SAFETY_MAX_AGE_S) -> None:
        self.path = Path(path)
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.safety_max_age_s = safety_max_age_s
        self._wal_bytes = 0 if max_bytes is None else max_bytes // 8
        self._lock = threading.Lock()
        try:
            # private to the service user: the journal says who came and when (SQLite gives
            # the -wal and -shm files the database file's mode)
            make_dirs_private(self.path.parent)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per event.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=10.0)
            # auto_vacuum must be chosen before the first table exists; it lets prune() return
            # freed pages to the file system so max_bytes bounds the file, not just the rows.
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise JournalError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous=FULL")
            if max_bytes is not None:
                # the WAL counts against the budget: an eighth of it. SQLite checkpoints the
                # WAL after that many bytes and truncates it to that size (else it keeps the
                # largest size it ever had); the database is pruned to the rest.
                page = self._db.execute("PRAGMA page_size").fetchone()[0]
                self._db.execute(f"PRAGMA wal_autocheckpoint={max(4, self._wal_bytes // page)}")
                self._db.execute(f"PRAGMA journal_size_limit={self._wal_bytes}")
            self._db.executescript(_SCHEMA)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise JournalError(f"{self.path}: journal schema {version} is newer than this "
                                   f"iotrt understands ({SCHEMA_VERSION}); upgrade iotrt")
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot open the journal for writing: {exc}") from exc
        except OSError as exc:
            raise JournalError(f"{self.path}: cannot create the journal: {exc}") from exc
        self._writes_since_prune = 0
        self._last_prune = time.monotonic()
        self.prune()

    # -- writing -----------------------------------------------------------------------------

    def write(self, kind: str, node: str, fields: dict[str, Any] | None = None,
              t_ns: int | None = None) -> int:
        """Append one event; returns its id once it is durable (committed with fsync)."""
        if not kind or not isinstance(kind, str):
            raise BadRecord("a journal event needs a non-empty kind")
        fields = {} if fields is None else fields
        text = _encode_fields(fields)
        rule = fields.get("rule")
        row = (time.time_ns() if t_ns is None else int(t_ns), kind, str(node),
               rule if isinstance(rule, str) else None, text)
        with self._lock:
            if self._db is None:
                raise JournalError(f"{self.path}: the journal is closed")
            try:
                cur = self._db.execute(
                    "INSERT INTO events (t_ns, kind, node, rule, fields) VALUES (?, ?, ?, ?, ?)",
                    row)
                event_id = cur.lastrowid
                self._writes_since_prune += 1
                if (self._writes_since_prune >= PRUNE_EVERY
                        or time.monotonic() - self._last_prune >= PRUNE_INTERVAL_S):
                    self._prune_locked()
            except OverflowError as exc:
                raise BadRecord(f"t_ns {row[0]} does not fit a 64-bit integer") from exc
            except sqlite3.Error as exc:  # disk full, I/O error: the caller decides, not a crash
                raise JournalError(f"{self.path}: cannot write to the journal: {exc}") from exc
        return event_id

    def write_record(self, body: Any) -> int:
        """Write a node's ``record`` message (see iotrt.protocol: ``{"type": "record", "id",
        "kind", "fields", "t_ns"}``), checking it first: it comes from another process.
        Raises BadRecord naming what is wrong; returns the event id."""
        if not isinstance(body, dict):
            raise BadRecord(f"a journal record must be a map, not {type(body).__name__}")
        node, kind, fields, t_ns = (body.get(k) for k in ("id", "kind", "fields", "t_ns"))
        if not isinstance(node, str) or not node:
            raise BadRecord("a journal record needs the sending node's 'id'")
        if not isinstance(kind, str) or not kind:
            raise BadRecord(f"record from {node!r}: 'kind' must be a non-empty string")
        if not isinstance(fields, dict):
            raise BadRecord(f"record {kind!r} from {node!r}: 'fields' must be a map")
        if t_ns is not None and type(t_ns) is not int:
            raise BadRecord(f"record {kind!r} from {node!r}: 't_ns' must be an integer")
        return self.write(kind, node, fields, t_ns)

    def prune(self, now_ns: int | None = None) -> int:
        """Apply the retention limits now; returns how many events were deleted."""
        with self._lock:
            try:
                return self._prune_locked(now_ns)
            except sqlite3.Error as exc:
                raise JournalError(f"{self.path}: cannot prune the journal: {exc}") from exc

    def _prune_locked(self, now_ns: int | None = None) -> int:
        self._writes_since_prune = 0
        self._last_prune = time.monotonic()
        deleted = 0
        now_ns = time.time_ns() if now_ns is None else now_ns
        safety = ",".join("?" * len(SAFETY_KINDS))
        if self.max_age_s is not None:
            cutoff = now_ns - int(self.max_age_s * 1e9)
            deleted += self._db.execute(
                f"DELETE FROM events WHERE t_ns < ? AND kind NOT IN ({safety})",
                (cutoff, *SAFETY_KINDS)).rowcount
        if self.safety_max_age_s is not None:
            cutoff = now_ns - int(self.safety_max_age_s * 1e9)
            deleted += self._db.execute("DELETE FROM events WHERE t_ns < ?", (cutoff,)).rowcount
        if self.max_bytes is not None:
            deleted += self._prune_to_size()
        if deleted:
            self._vacuum()
        if deleted and self.max_bytes is not None:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return deleted

    def _used_bytes(self) -> int:
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * page_size

    def _prune_to_size(self) -> int:
        deleted = 0
        # Delete the oldest events down to 90% of the limit so pruning does not run on every
        # write once the journal is full. Row size is estimated from the current average. Other
        # events go first; safety events only when nothing else is left.
        safety = ",".join("?" * len(SAFETY_KINDS))
        chatter = (f"kind NOT IN ({safety})", SAFETY_KINDS)
        limit = self.max_bytes - self._wal_bytes   # the WAL has the rest of the budget
        for where, args in (chatter, ("1", ())):
            while (used := self._used_bytes()) > limit:
                count = self._db.execute("SELECT count(*) FROM events").fetchone()[0]
                if count == 0:
                    return deleted
                target = int(limit * 0.9)
                excess = max(1, int(count * (used - target) / used))
                gone = self._db.execute(
                    f"DELETE FROM events WHERE id IN (SELECT id FROM events WHERE {where} "
                    f"ORDER BY id LIMIT ?)", (*args, excess)).rowcount
                self._vacuum()
                if gone == 0:
                    break
                deleted += gone
        return deleted

    def _vacuum(self) -> None:
        # Python's execute() steps this pragma once, which frees a single page; executescript
        # runs it to completion and so returns every free page to the file system.
        self._db.executescript("PRAGMA incremental_vacuum;")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    @staticmethod
    def open_readonly(path: str | os.PathLike) -> JournalReader:
        return JournalReader(path)


class JournalReader:
    """Read-only view of a journal, usable by a user without write access to its files.

    While the supervisor runs, SQLite reads the WAL through its shared-memory index read-only. When
    no writer is running, the -wal/-shm files are gone and a read-only user cannot create them, so
    we fall back to opening the file as immutable (safe then: nobody is writing it).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise JournalError(f"{self.path}: no journal here (has the graph run yet? the "
                               f"supervisor creates it in the graph's state directory)")
        uri = self.path.resolve().as_uri()
        try:
            self._db = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
            self._db.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise JournalError(f"{self.path}: not an iotrt journal") from exc
            if os.access(self.path.parent, os.W_OK) or Path(f"{self.path}-wal").exists():
                raise JournalError(f"{self.path}: cannot read the journal: {exc}") from exc
            self._db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True,
                                       check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{self.path}: not a readable SQLite journal: {exc}") from exc

    def query(self, since: int | None = None, rule: str | None = None, kind: str | None = None,
              after_id: int | None = None, limit: int | None = None,
              node: str | None = None) -> list[JournalEntry]:
        """Events in id order. ``since`` is wall-clock ns; ``after_id`` pages or follows;
        ``limit`` keeps the newest ``limit`` matches (like ``tail -n``)."""
        where, args = [], []
        for clause, value in (("t_ns >= ?", since), ("rule = ?", rule), ("kind = ?", kind),
                              ("id > ?", after_id), ("node = ?", node)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = "SELECT id, t_ns, kind, node, fields FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY id"
            args.append(int(limit))
        else:
            sql += " ORDER BY id"
        try:
            rows = self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{self.path}: cannot read the journal: {exc}") from exc
        return [JournalEntry(i, t, k, n, json.loads(f)) for i, t, k, n, f in rows]

    def follow(self, poll_s: float = 0.5, stop=lambda: False,
               **filters: Any) -> Iterator[JournalEntry]:
        """Yield matching events after ``after_id`` (all if None), then new ones as they are
        written, until ``stop()`` returns true."""
        after = filters.pop("after_id", None)
        while not stop():
            batch = self.query(after_id=after, **filters)
            yield from batch
            if batch:
                after = batch[-1].id
            else:
                # The WAL index is rechecked on each query; a short poll is what `tail -f` does.
                time.sleep(poll_s)

    def last_id(self) -> int:
        return self._db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
