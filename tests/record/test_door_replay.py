"""Record the shipped door graph live, replay it, and compare (issue 15).

One live run of configs/door.yaml on a video file of the simulated doorstep that starts with
20 s of empty hallway (so every node, and the recorder, is connected before anyone comes), then
owner, empty, visitor, empty, owner, empty. `iotrt record` records cam/image and who/faces for
the whole visit (~20 s of it has people), then:

- `iotrt replay --rate max` of that file reproduces the live run's rule firings and commands
  (count, order, payload), read from both journals;
- the visitor's clip (the clips node, asked by the visitor rule) exists, holds frames from 5 s
  before the firing to 3 s after, and the ring stayed within its memory bound;
- the mcap library's own reader lists both topics with the counts the recorder wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from helpers import wait_for
from mcap.reader import make_reader

from iotrt.journal import Journal, JournalError
from iotrt.recording import Recording

ROOT = Path(__file__).resolve().parents[2]
DOOR = ROOT / "configs" / "door.yaml"
FPS = 15
LEAD_IN_S = 20


def render_visit(path: Path) -> None:
    """Empty hallway for LEAD_IN_S, then 18 s of the scene: owner 0-4 s, empty, visitor 6-10 s,
    empty, owner 12-16 s, empty."""
    from iotrt.nodes.sensing.scene import DoorScene

    scene = DoorScene(640, 480, 12.0)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(FPS), (640, 480))
    try:
        for k in range(LEAD_IN_S * FPS):   # t in 11.0..11.5: nobody at the door
            out.write(cv2.cvtColor(scene.render(11.0 + (k % FPS) / FPS * 0.5),
                                   cv2.COLOR_RGB2BGR))
        for k in range(18 * FPS):
            out.write(cv2.cvtColor(scene.render(k / FPS), cv2.COLOR_RGB2BGR))
    finally:
        out.release()


def journal(env: dict) -> list:
    path = Path(env["IOTRT_STATE_DIR"]) / "door" / "journal.db"
    if not path.exists():
        return []
    try:
        reader = Journal.open_readonly(path)
    except JournalError:      # the supervisor is creating it
        return []
    try:
        return reader.query()
    finally:
        reader.close()


def decisions(events: list) -> list[tuple]:
    """Rule firings in order, and each actuator's commands in order (one sender thread per
    actuator: commands to different actuators have no order among themselves)."""
    fired = [("fired", e.fields["rule"], e.fields["trigger"]) for e in events
             if e.kind == "rule_fired"]
    outputs = sorted({e.fields["output"] for e in events if e.kind == "command_sent"})
    commands = [("command", o, e.fields["rule"], json.dumps(e.fields["data"], sort_keys=True))
                for o in outputs for e in events
                if e.kind == "command_sent" and e.fields["output"] == o]
    return fired + commands


def door_graph(folder: Path) -> Path:
    """configs/door.yaml with its rules and gallery, copied into `folder`."""
    for name in ("door.yaml", "door.rules.yaml", "door.gallery.npz"):
        shutil.copy(DOOR.parent / name, folder / name)
    return folder / "door.yaml"


@pytest.fixture(scope="module")
def door_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("door-record")
    door = door_graph(tmp)
    video = tmp / "visit.avi"
    render_visit(video)
    run_dir = Path("/tmp") / f"iotrt-rec-{os.getpid()}"      # short: ipc paths max 107 bytes
    env = dict(os.environ, IOTRT_STATE_DIR=str(tmp / "state"), IOTRT_RUNTIME_DIR=str(run_dir),
               CAMERA_SOURCE="file", CAMERA_URI=str(video), CAMERA_FPS=str(FPS))
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(var, None)
    rec_file = tmp / "visit.mcap"
    up = subprocess.Popen([sys.executable, "-m", "iotrt", "up", str(door)], env=env,
                          stdout=open(tmp / "up.log", "w"), stderr=subprocess.STDOUT,
                          start_new_session=True)
    recorder = None
    try:

        def running(node):      # lifecycle rows are per node (with its process in the fields)
            return any(e.kind == "lifecycle" and e.node == node and e.fields["state"] == "running"
                       for e in journal(env))

        wait_for(lambda: running("rules") and running("clips"), 120, "the door graph running")
        recorder = subprocess.Popen(
            [sys.executable, "-m", "iotrt", "record", "--graph", str(door), "-o", str(rec_file),
             "--topics", "cam/image,who/faces"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)

        def visit_over():
            evs = journal(env)
            visitor = next((e.id for e in evs if e.kind == "rule_fired"
                            and e.fields["rule"] == "visitor"), None)
            if visitor is None:
                return False
            owner = next((e.id for e in evs if e.id > visitor and e.kind == "rule_fired"
                          and e.fields["rule"] == "unlock_for_enrolled"), None)
            return owner is not None and any(e.id > owner and e.kind == "faces_seen"
                                             and e.fields["faces"] == 0 for e in evs)

        wait_for(visit_over, 120, "owner, visitor and owner again in the journal")
        time.sleep(0.3)     # a few empty frames into the recording: it ends in a quiet moment
        recorder.send_signal(signal.SIGINT)
        _, err = recorder.communicate(timeout=30)
        assert recorder.returncode == 0, err
        wait_for(lambda: any(e.kind == "clip_saved" for e in journal(env)), 60,
                 "the visitor's clip")
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
        yield {"env": env, "file": rec_file, "events": journal(env), "tmp": tmp, "door": door,
               "recorder_err": err}
    finally:
        for proc in (recorder, up):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)


def test_recording_starts_before_the_visit(door_run):
    """The precondition of an exact comparison: the recorder saw the hallway empty before
    the first face, so live rules and recording start from the same (empty) state."""
    first = next(Recording(door_run["file"]).messages({"who/faces"}))
    assert first.data["faces"] == [], "the recorder connected after someone was at the door"


def test_mcap_reader_lists_every_topic_with_its_count(door_run):
    """The mcap library's reader (not ours) sees both topics with the counts written."""
    err = door_run["recorder_err"]
    written = int(err.split("wrote ")[1].split(": ")[1].split(" message")[0])
    with open(door_run["file"], "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        counts = {summary.channels[c].topic: n
                  for c, n in summary.statistics.channel_message_counts.items()}
        iterated: dict[str, int] = {}
        for _, channel, _ in reader.iter_messages():
            iterated[channel.topic] = iterated.get(channel.topic, 0) + 1
    assert set(counts) == {"cam/image", "who/faces"}
    assert counts == iterated
    assert sum(counts.values()) == written
    assert counts["cam/image"] > 15 * FPS      # the recording spans the whole visit


def test_replay_at_max_rate_reproduces_the_decisions(door_run, tmp_path):
    env = dict(door_run["env"], IOTRT_RUNTIME_DIR=f"/tmp/iotrt-rep-{os.getpid()}")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "iotrt", "replay", str(door_run["file"]), "--graph",
             str(door_run["door"]), "--rate", "max", "--compare", "--state-dir", str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=180)
    finally:
        subprocess.run(["rm", "-rf", env["IOTRT_RUNTIME_DIR"]], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "identical to the live run" in out.stdout

    info = Recording(door_run["file"]).info()
    live = [e for e in door_run["events"]
            if info.wall_ns(info.start_ns) <= e.t_ns <= info.wall_ns(info.end_ns)]
    reader = Journal.open_readonly(tmp_path / "door" / "journal.db")
    replayed = reader.query()
    reader.close()
    assert decisions(replayed) == decisions(live)
    rules = [d[1] for d in decisions(live) if d[0] == "fired"]
    assert "visitor" in rules and "unlock_for_enrolled" in rules
    # not started in the replay: the recorded topics' publishers and the detector (lifecycle
    # rows are per node)
    started = {e.node for e in replayed if e.kind == "lifecycle"}
    assert not started & {"cam", "who", "faces"}
    assert {"rules", "lock", "replay"} <= started


def test_visitor_clip_holds_the_seconds_before(door_run):
    evs = door_run["events"]
    fired = next(e for e in evs if e.kind == "rule_fired" and e.fields["rule"] == "visitor")
    clip = next(e for e in evs if e.kind == "clip_saved")
    f = clip.fields
    assert f["reason"] == "visitor" and f["before_s"] == 5 and f["after_s"] == 3
    assert clip.t_ns > fired.t_ns
    path = Path(f["path"])
    assert path.is_file() and path.suffix == ".mcap"
    frames = [m for m in Recording(path).messages() if m.topic == "cam/image"]
    stamps = [m.stamp_ns for m in frames]
    event = f["event_stamp_ns"]
    # frames from 5 s before the firing's message (one frame period of slack) to 3 s after
    assert min(stamps) <= event - int(4.9e9) and min(stamps) >= event - int(5e9)
    assert max(stamps) >= event + int(2.9e9)
    assert len(frames) >= 7 * FPS and frames[0].data.shape == (480, 640, 3)
    # the pre-event ring never held more than its bound (ring_mb: 16 in door.yaml)
    assert 0 < f["ring_peak_bytes"] <= f["ring_limit_bytes"] == 16_000_000
