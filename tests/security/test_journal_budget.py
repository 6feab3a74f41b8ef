"""Attack 9: the journal's retention ignored the WAL file, which alone filled a 2 MB state
partition, and one 50 MB record evicted the whole history. Records are capped (large values
summarised), the WAL counts against the budget, and safety events outlive chatter."""

from __future__ import annotations

import os

from iotrt.journal import MAX_RECORD_BYTES, Journal, JournalReader

BUDGET = 256 * 1024


def on_disk(path) -> int:
    return sum(os.path.getsize(f"{path}{ext}") for ext in ("", "-wal")
               if os.path.exists(f"{path}{ext}"))


def test_the_wal_counts_against_the_budget(tmp_path):
    db = tmp_path / "journal.db"
    peak = 0
    with Journal(db, max_bytes=BUDGET) as j:
        for i in range(400):     # each insert rewrites a few pages: the WAL grows fast
            j.write("rule_fired", "rules", {"rule": "r", "i": i, "pad": "x" * 300})
            peak = max(peak, on_disk(db))
    assert peak <= BUDGET * 1.25, f"journal + WAL reached {peak} bytes, budget {BUDGET}"


def test_one_huge_record_is_summarised_and_keeps_the_history(tmp_path):
    db = tmp_path / "journal.db"
    with Journal(db, max_bytes=2 * 1024 * 1024) as j:
        first = j.write("command_applied", "lock", {"id": "c1", "result": {"ok": True}})
        big = j.write("frame", "cam", {"who": "x", "image": "A" * 50_000_000})
        assert on_disk(db) <= 2 * 1024 * 1024 * 1.25
    with JournalReader(db) as r:
        events = {e.id: e for e in r.query()}
    assert first in events and events[first].fields["id"] == "c1"
    summary = events[big].fields
    assert summary["who"] == "x"
    assert summary["image"]["summarised"] == "str"
    assert summary["image"]["json_chars"] == 50_000_002 and summary["image"]["head"].startswith('"AAA')
    assert len(str(summary)) < MAX_RECORD_BYTES


def test_many_keys_are_summarised_too(tmp_path):
    with Journal(tmp_path / "journal.db") as j:
        j.write("chatter", "n", {f"k{i}": i for i in range(100_000)})
    with JournalReader(tmp_path / "journal.db") as r:
        fields = r.query()[-1].fields
    assert fields["summarised_keys"] == 100_000 and len(fields) < 5000


def test_safety_events_outlive_chatter(tmp_path):
    db = tmp_path / "journal.db"
    with Journal(db, max_bytes=BUDGET) as j:
        safety = [j.write("command_applied", "lock", {"id": f"c{i}", "action": "unlock"})
                  for i in range(20)]
        for _ in range(150):
            j.write("rule_fired", "rules", {"rule": "r", "pad": "y" * 8000})
        j.prune()
    with JournalReader(db) as r:
        kept = r.query()
    assert [e.id for e in kept if e.kind == "command_applied"] == safety
    assert sum(e.kind == "rule_fired" for e in kept) < 150      # chatter went first


def test_safety_events_have_a_longer_age_limit(tmp_path):
    db = tmp_path / "journal.db"
    day = 86400 * 10**9
    with Journal(db, max_age_s=10 * 86400, safety_max_age_s=100 * 86400) as j:
        j.write("command_applied", "lock", {"id": "old"}, t_ns=1_000 * day)
        j.write("rule_fired", "rules", {"rule": "old"}, t_ns=1_000 * day)
        j.prune(now_ns=1_050 * day)
        with JournalReader(db) as r:
            assert [e.kind for e in r.query()] == ["command_applied"]
        j.prune(now_ns=1_200 * day)
        with JournalReader(db) as r:
            assert r.query() == []
