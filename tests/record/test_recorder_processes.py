"""Recorders as real processes: `iotrt record` killed with SIGKILL leaves readable messages;
the recorder node rotates and prunes its files and journals each one; Ctrl-C gives a complete,
indexed file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Up, up_env, wait_for
from mcap.exceptions import McapError
from mcap.reader import NonSeekingReader, make_reader

from iotrt.journal import Journal, JournalError
from iotrt.recording import Recording, TruncatedRecording

GRAPH = """\
name: rectest
nodes:
  - id: cam
    kind: camera
    params: {source: sim, width: 160, height: 120, fps: 20}
  - id: rec
    kind: recorder
    params: {dir: DIR, max_file_s: 1, keep_files: 3, flush_s: 0.2}
    inputs:
      image: {from: cam/image, queue: 4}
"""


@pytest.fixture
def graph(tmp_path):
    path = tmp_path / "rectest.yaml"
    path.write_text(GRAPH.replace("DIR", str(tmp_path / "recordings")))
    run_dir = Path("/tmp") / f"iotrt-rt-{os.getpid()}"
    env = up_env(run_dir, tmp_path / "state")
    up = Up(path, env, tmp_path / "up.log")
    try:
        yield up, env, tmp_path
    finally:
        up.close()
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)


def events(tmp_path: Path, kind: str) -> list:
    path = tmp_path / "state" / "rectest" / "journal.db"
    if not path.exists():
        return []
    try:
        reader = Journal.open_readonly(path)
    except JournalError:      # the supervisor is creating it
        return []
    try:
        return reader.query(kind=kind)
    finally:
        reader.close()


def mcap_messages(path: Path) -> tuple[int, bool]:
    """(messages the mcap library's streaming reader reads, in file order, and whether it got
    to the end without an error). A file without its footer has no index for make_reader's
    seeking reader; streaming is how any MCAP tool reads one."""
    n = 0
    with open(path, "rb") as f:
        try:
            for _ in NonSeekingReader(f).iter_messages(log_time_order=False):
                n += 1
        except (McapError, EOFError, ValueError):
            return n, False
    return n, True


def record(env, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "iotrt", "record", "--graph", "rectest",
                             "-o", str(out), "--topics", "cam/image"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkilled_recorder_leaves_readable_messages(graph):
    up, env, tmp = graph
    up.wait_log("rec: starting -> running")
    out = tmp / "killed.mcap"
    proc = record(env, out)
    try:
        # wait until several chunks are on disk (the recorder flushes every second)
        wait_for(lambda: out.exists() and out.stat().st_size > 200_000, 30, "flushed chunks")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    n, clean = mcap_messages(out)
    assert n >= 10 and not clean           # the mcap library reads up to where it stops
    with pytest.raises(TruncatedRecording):
        Recording(out).info()
    ours = list(Recording(out, partial=True).messages())
    assert len(ours) == n and all(m.data.shape == (120, 160, 3) for m in ours)
    assert [m.seq for m in ours] == sorted(m.seq for m in ours)


def test_ctrl_c_gives_a_complete_file(graph):
    up, env, tmp = graph
    up.wait_log("rec: starting -> running")
    out = tmp / "ok.mcap"
    proc = record(env, out)
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 100_000, 30, "recorded frames")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    n, clean = mcap_messages(out)
    info = Recording(out).info()
    assert clean and info.complete and info.messages == n > 0
    with open(out, "rb") as f:     # indexed: the seeking reader's summary has the count
        summary = make_reader(f).get_summary()
    assert sum(summary.statistics.channel_message_counts.values()) == n
    assert f"{n} message(s)" in err


def test_recorder_node_rotates_prunes_and_journals(graph):
    up, env, tmp = graph
    wait_for(lambda: len(events(tmp, "recording_saved")) >= 5, 60, "5 rotated files")
    saved = events(tmp, "recording_saved")
    files = sorted((tmp / "recordings").glob("rec-*.mcap"))
    assert len(files) <= 3 + 1                       # keep_files, plus the one being written
    for e in saved:
        path = Path(e.fields["path"])
        if path.exists() and path != files[-1]:
            info = Recording(path).info()
            assert info.complete and info.messages == e.fields["messages"] > 0
            assert info.meta["graph"] == "rectest" and info.meta["recorder"] == "rec"
    assert not Path(saved[0].fields["path"]).exists()   # the oldest were pruned
