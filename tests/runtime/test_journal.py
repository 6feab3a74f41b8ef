"""The event journal: durable writes, crash safety, read-only readers, retention."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from iotrt.journal import BadRecord, Journal, JournalError, JournalReader

ROOT = Path(__file__).resolve().parents[2]


def test_write_then_query_with_filters(tmp_path):
    with Journal(tmp_path / "state" / "journal.db") as j:
        a = j.write("rule_fired", "rules", {"rule": "owner_unlock", "person": "ana"}, t_ns=1_000)
        b = j.write("command_sent", "rules", {"rule": "owner_unlock", "id": "c1"}, t_ns=2_000)
        c = j.write("command_applied", "lock", {"id": "c1", "state": "unlocked"}, t_ns=3_000)
        d = j.write("rule_fired", "rules", {"rule": "visitor", "blob": b"\x01\x02"}, t_ns=4_000)
    assert a < b < c < d
    with Journal.open_readonly(tmp_path / "state" / "journal.db") as r:
        assert [e.id for e in r.query()] == [a, b, c, d]
        assert [e.id for e in r.query(rule="owner_unlock")] == [a, b]
        assert [e.id for e in r.query(kind="rule_fired")] == [a, d]
        assert [e.id for e in r.query(since=3_000)] == [c, d]
        assert [e.id for e in r.query(after_id=b)] == [c, d]
        assert [e.id for e in r.query(limit=2)] == [c, d]  # the newest two, oldest first
        assert [e.id for e in r.query(node="lock")] == [c]
        ev = r.query(kind="command_applied")[0]
        assert (ev.node, ev.t_ns, ev.fields) == ("lock", 3_000, {"id": "c1", "state": "unlocked"})
        assert r.query(rule="visitor")[0].fields["blob"] == "0102"  # bytes kept readable
        assert r.last_id() == d


def test_write_rejects_bad_input_and_keeps_going(tmp_path):
    with Journal(tmp_path / "j.db") as j:
        with pytest.raises(BadRecord, match="must be a dict"):
            j.write("x", "n", ["not", "a", "dict"])
        with pytest.raises(BadRecord, match="kind"):
            j.write("", "n", {})
        ok = j.write("x", "n", {"set": {1}, "obj": object()})
    with JournalReader(tmp_path / "j.db") as r:
        (ev,) = r.query()
        assert ev.id == ok and ev.fields["set"] == [1] and "object" in ev.fields["obj"]


def test_write_record_checks_what_a_node_sent(tmp_path):
    with Journal(tmp_path / "j.db") as j:
        eid = j.write_record({"type": "record", "id": "door", "kind": "command_applied",
                              "fields": {"id": "c1"}, "t_ns": 5})
        for body, why in [("x", "must be a map"), ({"kind": "k", "fields": {}}, "'id'"),
                          ({"id": "n", "kind": 3, "fields": {}}, "'kind'"),
                          ({"id": "n", "kind": "k", "fields": []}, "'fields'"),
                          ({"id": "n", "kind": "k", "fields": {}, "t_ns": 1.5}, "'t_ns'")]:
            with pytest.raises(BadRecord, match=why):
                j.write_record(body)
    with JournalReader(tmp_path / "j.db") as r:
        (ev,) = r.query()
        assert (ev.id, ev.node, ev.kind, ev.t_ns, ev.fields) == (eid, "door", "command_applied",
                                                                  5, {"id": "c1"})


def test_unstorable_input_and_a_closed_journal_are_journal_errors(tmp_path):
    j = Journal(tmp_path / "j.db")
    with pytest.raises(BadRecord, match="64-bit"):
        j.write("k", "n", {}, t_ns=2**70)
    kept = j.write("k", "n", {"name": "Jos\udce9", "ok": "José"})  # a lone surrogate
    j.close()
    with pytest.raises(JournalError, match="closed"):
        j.write("k", "n", {})
    with JournalReader(tmp_path / "j.db") as r:
        (ev,) = r.query()
        assert ev.id == kept and ev.fields == {"name": "Jos\udce9", "ok": "José"}


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(JournalError, match="no journal here"):
        JournalReader(tmp_path / "missing.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(JournalError, match="not an iotrt journal"):
        JournalReader(other)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match="junk.db"):
        JournalReader(junk)


_WRITER = textwrap.dedent("""
    import sys
    from iotrt.journal import Journal
    j = Journal(sys.argv[1])
    mode = sys.argv[2]
    if mode == "open_txn":
        for i in range(50):
            print(j.write("committed", "w", {"i": i}), flush=True)
        # A transaction that is never committed: the kill lands inside it.
        j._db.execute("BEGIN IMMEDIATE")
        for i in range(1000):
            j._db.execute("INSERT INTO events (t_ns, kind, node, fields) "
                          "VALUES (0, 'uncommitted', 'w', '{}')")
        print("in-txn", flush=True)
        sys.stdin.read()
    else:
        i = 0
        while True:  # write as fast as fsync allows until killed
            print(j.write("committed", "w", {"i": i, "pad": "x" * 200}), flush=True)
            i += 1
""")


def _run_writer(path: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(path), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _assert_intact(path: Path, committed: list[int]) -> None:
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with JournalReader(path) as r:
        ids = {e.id for e in r.query(kind="committed")}
        assert set(committed) <= ids, f"lost committed events: {sorted(set(committed) - ids)}"
        assert r.query(kind="uncommitted") == []


def test_writer_killed_inside_a_transaction_loses_no_committed_event(tmp_path):
    path = tmp_path / "journal.db"
    proc = _run_writer(path, "open_txn")
    committed = []
    try:
        for line in proc.stdout:
            if line.strip() == "in-txn":
                break
            committed.append(int(line))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert len(committed) == 50
    assert Path(f"{path}-wal").exists()  # the crash left the WAL behind: recovery is real
    _assert_intact(path, committed)
    # The journal reopens for writing after the crash and carries on with fresh ids.
    with Journal(path) as j:
        assert j.write("after", "w", {}) > committed[-1]


def test_writer_killed_while_writing_fast_loses_no_committed_event(tmp_path):
    path = tmp_path / "journal.db"
    proc = _run_writer(path, "loop")
    committed = []
    try:
        for line in proc.stdout:
            committed.append(int(line))
            if len(committed) == 200:
                proc.send_signal(signal.SIGKILL)  # lands while the next write is in flight
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert len(committed) >= 200
    _assert_intact(path, committed)


def test_bad_records_are_journal_errors():
    # The supervisor catches JournalError around writes: a node sending nonsense must not
    # take it down, so bad input is both a JournalError and a ValueError.
    assert issubclass(BadRecord, JournalError) and issubclass(BadRecord, ValueError)


def test_retention_by_age(tmp_path):
    now = time.time_ns()
    with Journal(tmp_path / "j.db", max_age_s=3600) as j:
        old = [j.write("old", "n", {}, t_ns=now - int(7200e9)) for _ in range(5)]
        new = j.write("new", "n", {}, t_ns=now)
        assert j.prune(now_ns=now) == len(old)
    with JournalReader(tmp_path / "j.db") as r:
        assert [e.id for e in r.query()] == [new]


def test_retention_by_size_bounds_the_file(tmp_path, monkeypatch):
    import iotrt.journal

    monkeypatch.setattr(iotrt.journal, "PRUNE_EVERY", 50)
    path = tmp_path / "j.db"
    limit = 256 * 1024
    sizes = []
    with Journal(path, max_bytes=limit) as j:
        last = 0
        for i in range(400):  # ~1.6 MB of events, six times the limit, pruned as it goes
            last = j.write("e", "n", {"i": i, "pad": "y" * 4000})
            if i % 50 == 49:
                j._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                sizes.append(path.stat().st_size)
    assert max(sizes) <= limit + 50 * 4200  # never more than one prune period over the limit
    assert sizes[-1] <= limit * 1.1
    with JournalReader(path) as r:
        events = r.query()
        assert events and events[-1].id == last  # the newest are kept, the oldest went
        assert len(events) < 400
        assert [e.id for e in events] == list(range(events[0].id, last + 1))


def test_reader_follows_new_events(tmp_path):
    path = tmp_path / "j.db"
    j = Journal(path)
    first = j.write("a", "n", {})
    seen: list[int] = []
    done = threading.Event()
    r = JournalReader(path)

    def follow():
        for ev in r.follow(poll_s=0.02, stop=done.is_set, after_id=first):
            seen.append(ev.id)
    t = threading.Thread(target=follow)
    t.start()
    try:
        ids = [j.write("b", "n", {"i": i}) for i in range(3)]
        deadline = time.monotonic() + 5
        while seen != ids and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        done.set()
        t.join(timeout=5)
        r.close()
        j.close()
    assert seen == ids


def _can_mount_readonly() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind -o ro / /"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


_READER = textwrap.dedent("""
    import sys
    from iotrt.journal import JournalReader
    with JournalReader(sys.argv[1]) as r:
        print(",".join(str(e.id) for e in r.query()))
""")


def _read_without_write_access(path: Path) -> str:
    # A private mount namespace where the state directory is read-only: even root cannot create
    # or write the -wal/-shm files there, exactly the position of a user without write access.
    folder = str(path.parent)
    script = 'mount --bind -o ro "$1" "$1" && exec "$2" -c "$3" "$4"'
    out = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", folder, sys.executable,
                          _READER, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not _can_mount_readonly(), reason="needs root and unshare for a ro mount")
def test_a_reader_without_write_access_sees_every_event(tmp_path):
    path = tmp_path / "state" / "journal.db"
    j = Journal(path)
    try:
        ids = [j.write("e", "n", {"i": i}) for i in range(3)]
        # While the writer runs, the newest events are still only in the WAL ...
        assert Path(f"{path}-wal").stat().st_size > 0
        assert _read_without_write_access(path) == ",".join(map(str, ids))
    finally:
        j.close()
    # ... and once it stopped there are no -wal/-shm files and the reader cannot create them.
    assert not Path(f"{path}-wal").exists()
    assert _read_without_write_access(path) == ",".join(map(str, ids))
    # A writer that died without closing leaves its WAL: the reader must see those events too.
    crash = ("import os, sys; from iotrt.journal import Journal; j = Journal(sys.argv[1]); "
             "print(j.write('late', 'n', {}), flush=True); os._exit(0)")
    late = subprocess.run([sys.executable, "-c", crash, str(path)], capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()
    assert Path(f"{path}-wal").exists()
    assert _read_without_write_access(path) == ",".join(map(str, ids + [int(late)]))


# -- `iotrt events` ----------------------------------------------------------------------------

def _events(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iotrt", "events", *args], capture_output=True,
                          text=True, timeout=60, **kw)


def test_parse_since():
    import argparse
    import datetime as dt

    from iotrt.verbs.events import parse_since
    now = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    assert parse_since("10m", now) == int((now - dt.timedelta(minutes=10)).timestamp() * 1e9)
    assert parse_since("1.5h", now) == int((now - dt.timedelta(minutes=90)).timestamp() * 1e9)
    assert parse_since("2026-05-01T08:30+00:00") == int(
        dt.datetime(2026, 5, 1, 8, 30, tzinfo=dt.timezone.utc).timestamp() * 1e9)
    with pytest.raises(argparse.ArgumentTypeError, match="duration like 30s"):
        parse_since("yesterday-ish")


def test_events_cli_filters_and_json(tmp_path):
    now = time.time_ns()
    state = tmp_path / "root" / "door"
    with Journal(state / "journal.db") as j:
        j.write("rule_fired", "rules", {"rule": "owner_unlock", "person": "ana"},
                t_ns=now - int(3 * 3600e9))
        j.write("rule_fired", "rules", {"rule": "owner_unlock", "person": "ben b"}, t_ns=now)
        j.write("command_applied", "lock", {"id": "c1", "state": "unlocked"}, t_ns=now)
    out = _events("--state-dir", str(state), "--rule", "owner_unlock", "--since", "1h",
                  "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["fields"]["person"] for r in rows] == ["ben b"]
    assert rows[0]["kind"] == "rule_fired" and rows[0]["time"]
    text = _events("--journal", str(state / "journal.db"), "-n", "1").stdout
    assert text.count("\n") == 1 and "command_applied" in text and "state=unlocked" in text
    assert 'person="ben b"' in _events("--journal", str(state / "journal.db"), "--kind",
                                      "rule_fired", "-n", "1").stdout
    # Found through the state root: the only graph there, by name, or from the graph file.
    env = {**os.environ, "IOTRT_STATE_DIR": str(tmp_path / "root")}
    graph = tmp_path / "door.yaml"
    graph.write_text("name: door\nnodes:\n  - id: chime\n    kind: log\n")
    for args in ((), ("door",), (str(graph),)):
        out = _events(*args, "--kind", "rule_fired", env=env)
        assert out.stdout.count("rule_fired") == 2, (args, out.stderr)


def test_events_cli_errors(tmp_path):
    out = _events("--journal", str(tmp_path / "nope.db"))
    assert out.returncode == 1 and "no journal here" in out.stderr
    env = {**os.environ, "IOTRT_STATE_DIR": str(tmp_path / "root")}
    out = _events(env=env)
    assert out.returncode == 1 and "no journal under" in out.stderr
    for name in ("door", "robot"):
        Journal(tmp_path / "root" / name / "journal.db").close()
    out = _events(env=env)
    assert out.returncode == 1 and "several graphs" in out.stderr and "door, robot" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: door\nnodes:\n  - id: x\n    kind: nosuchkind\n")
    out = _events(str(bad), env=env)
    assert out.returncode == 1 and "bad.yaml:4" in out.stderr and "--journal" in out.stderr
    out = _events("--journal", "x", "--since", "soon")
    assert out.returncode == 2 and "duration like 30s" in out.stderr


def test_events_cli_follow(tmp_path):
    path = tmp_path / "journal.db"
    j = Journal(path)
    j.write("old", "n", {"i": 0})
    # `iotrt events` with Ctrl-C as a terminal delivers it. A test run started in the
    # background by a script inherits SIGINT ignored (POSIX shells do that to background jobs)
    # and would pass it on, so the child puts Python's own handler back first.
    # -X faulthandler: should it not stop, SIGABRT makes it print where it is stuck.
    as_in_a_terminal = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
                        " from iotrt.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", as_in_a_terminal, "events",
                             "--journal", str(path), "--follow", "--kind", "new"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        j.write("other", "n", {})
        new = j.write("new", "n", {"i": 1})
        line = proc.stdout.readline()  # blocks until the follower prints (pytest timeout guards)
        assert f"#{new}" in line and "new" in line
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            raise AssertionError(f"still following 30 s after Ctrl-C:\n{proc.communicate()[1]}") from None
        assert code == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        j.close()
