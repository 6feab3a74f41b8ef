"""The recording file format (iotrt.recording): round trip, an independent reader, bad files,
the clip node's bounded ring, and `iotrt replay`/`echo`/`rules test` refusing bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.writer import Writer

from iotrt import Node
from iotrt.codec import Envelope
from iotrt.graph import load_graph
from iotrt.nodes.observe import clip as clip_node
from iotrt.recording import (
    NewerRecording,
    NotARecording,
    NotRecordable,
    Recording,
    RecordingError,
    RecordWriter,
    TruncatedRecording,
)
from iotrt.replay import REPLAY_QUEUE, ReplayError, replay_graph

ROOT = Path(__file__).resolve().parents[2]
DOOR = ROOT / "configs" / "door.yaml"


def frame(k: int, h: int = 120, w: int = 160) -> np.ndarray:
    """A frame with structure (JPEG keeps it) and some noise (so sizes are realistic)."""
    rng = np.random.default_rng(k)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 255, w, dtype=np.uint8)
    img[h // 4: h // 2, w // 4: w // 2] = (200, 40 + k % 100, 90)
    return np.clip(img + rng.integers(0, 12, img.shape, dtype=np.uint8), 0, 255).astype(np.uint8)


def write_sample(path: Path, frames: str = "jpeg", counts=(7, 11, 1), meta=None) -> list:
    envs = []
    with RecordWriter(path, frames=frames, meta=meta) as w:
        for i in range(max(counts)):
            t = 1_000_000_000 + i * 10_000_000
            if i < counts[0]:
                envs.append(Envelope("cam/image", i, t, "cam", [["cam", t]], frame(i)))
            if i < counts[1]:
                envs.append(Envelope("who/faces", i, t + 1, "who", [["cam", t], ["who", t + 5]],
                                     {"faces": [{"name": "owner", "score": 0.9}],
                                      "box": np.arange(4, dtype=np.float32)}))
            if i < counts[2]:
                envs.append(Envelope("rules/events", i, t + 2, "rules", [], {"event": "x"}))
            for env in envs[-3:]:
                if env.seq == i:
                    w.write(env, log_time_ns=env.stamp_ns)
        w.drops["cam/image"] = 2
    return envs


def test_round_trip_keeps_every_field(tmp_path):
    envs = write_sample(tmp_path / "a.mcap", frames="raw")
    got = list(Recording(tmp_path / "a.mcap").messages())
    assert [(m.topic, m.seq, m.stamp_ns, m.src, m.trace) for m in got] == \
        [(e.topic, e.seq, e.stamp_ns, e.src, e.trace) for e in envs]
    for m, e in zip(got, envs):
        if m.topic == "cam/image":
            assert np.array_equal(m.data, e.data)         # raw frames are exact
        elif m.topic == "who/faces":
            assert m.data["faces"] == e.data["faces"]
            assert np.array_equal(m.data["box"], e.data["box"])
    info = Recording(tmp_path / "a.mcap").info()
    assert info.complete and info.drops == 2 and info.topics["cam/image"].drops == 2
    assert {t: i.count for t, i in info.topics.items()} == \
        {"cam/image": 7, "who/faces": 11, "rules/events": 1}


def test_a_message_the_codec_refuses_is_skipped_and_the_recording_goes_on(tmp_path):
    with RecordWriter(tmp_path / "a.mcap") as w:
        w.write(Envelope("a/x", 0, 1, "a", [], {"n": 0}))
        with pytest.raises(NotRecordable, match="message 1 on a/x: cannot send a set"):
            w.write(Envelope("a/x", 1, 2, "a", [], {"bad": {1, 2}}))
        w.write(Envelope("a/x", 2, 3, "a", [], {"n": 2}))
    assert [m.data for m in Recording(tmp_path / "a.mcap").messages()] == [{"n": 0}, {"n": 2}]


def test_jpeg_frames_come_back_close(tmp_path):
    envs = write_sample(tmp_path / "j.mcap", frames="jpeg")
    raw = write_sample(tmp_path / "r.mcap", frames="raw")
    assert envs and raw
    frames = [m for m in Recording(tmp_path / "j.mcap").messages({"cam/image"})]
    assert len(frames) == 7
    for m, e in zip(frames, [e for e in envs if e.topic == "cam/image"]):
        assert m.data.shape == e.data.shape and m.data.dtype == np.uint8
        assert np.abs(m.data.astype(int) - e.data.astype(int)).mean() < 6
    assert (tmp_path / "j.mcap").stat().st_size < (tmp_path / "r.mcap").stat().st_size / 2


def test_the_mcap_library_reads_every_topic_and_count(tmp_path):
    """An independent reader: the mcap package's own, with its summary and by iteration."""
    write_sample(tmp_path / "a.mcap")
    with open(tmp_path / "a.mcap", "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert reader.get_header().profile == "iotrt"
        counts = {summary.channels[c].topic: n
                  for c, n in summary.statistics.channel_message_counts.items()}
        seen: dict[str, int] = {}
        for schema, channel, _message in reader.iter_messages():
            seen[channel.topic] = seen.get(channel.topic, 0) + 1
            assert channel.message_encoding == "msgpack"
            assert schema.encoding == "jsonschema" and json.loads(schema.data)["title"]
    assert counts == seen == {"cam/image": 7, "who/faces": 11, "rules/events": 1}


def test_truncated_file_is_refused_then_read_partially(tmp_path):
    path = tmp_path / "a.mcap"
    w = RecordWriter(path, frames="raw", flush_s=0.0)    # every message flushed in its chunk
    for i in range(20):
        w.write(Envelope("cam/image", i, i, "cam", [], frame(i)))
    w.flush()
    size = path.stat().st_size
    w.close()
    path.write_bytes(path.read_bytes()[: size - 500])      # cut inside the last chunk
    with pytest.raises(TruncatedRecording) as exc:
        Recording(path).info()
    assert "truncated" in str(exc.value) and "\n" not in str(exc.value)
    got = list(Recording(path, partial=True).messages())
    assert [m.seq for m in got] == list(range(19))


def test_newer_format_and_foreign_files_are_refused(tmp_path):
    write_sample(tmp_path / "new.mcap", meta={"format": "2"})
    with pytest.raises(NewerRecording, match="format 2 was written by a newer iotrt"):
        Recording(tmp_path / "new.mcap").info()
    (tmp_path / "text.mcap").write_text("this is not a recording\n" * 10)
    with pytest.raises(NotARecording, match="not an MCAP file"):
        Recording(tmp_path / "text.mcap").info()
    (tmp_path / "empty.mcap").write_bytes(b"")
    with pytest.raises(NotARecording):
        Recording(tmp_path / "empty.mcap").info()
    with open(tmp_path / "ros.mcap", "wb") as f:
        w = Writer(f)
        w.start(profile="ros2", library="test")
        w.finish()
    with pytest.raises(NotARecording, match="not an iotrt recording"):
        Recording(tmp_path / "ros.mcap").info()


def run_cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "iotrt", *map(str, args)], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=env)


@pytest.fixture
def bad_files(tmp_path):
    write_sample(tmp_path / "ok.mcap")
    data = (tmp_path / "ok.mcap").read_bytes()
    (tmp_path / "truncated.mcap").write_bytes(data[: len(data) // 2])
    write_sample(tmp_path / "newer.mcap", meta={"format": "9"})
    (tmp_path / "notmcap.mcap").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with RecordWriter(tmp_path / "garage.mcap") as w:
        w.write(Envelope("garage/door", 0, 1, "garage", [], {"open": True}))
    return tmp_path


@pytest.mark.parametrize("name, says", [
    ("truncated.mcap", "truncated"), ("newer.mcap", "newer iotrt"),
    ("notmcap.mcap", "not an MCAP file"), ("garage.mcap", "garage/door is not in graph 'door'"),
])
def test_replay_refuses_bad_input_with_one_line(bad_files, name, says, monkeypatch):
    state = bad_files / f"state-{name}"
    env = dict(os.environ, IOTRT_RUNTIME_DIR=str(bad_files / "run"))
    out = run_cli("replay", bad_files / name, "--graph", DOOR, "--state-dir", state, env=env)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "nothing was started" in lines[0], out.stderr
    assert not (bad_files / "run").exists()                 # no socket folder: nothing ran
    assert not any(state.rglob("journal.db"))


def test_echo_and_rules_test_read_recordings(bad_files):
    out = run_cli("echo", "--file", bad_files / "ok.mcap", "who/faces", "-n", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("--- who/faces seq=") == 2 and '"name": "owner"' in out.stdout
    out = run_cli("echo", "--file", bad_files / "notmcap.mcap", "who/faces")
    assert out.returncode == 1 and "not an MCAP file" in out.stderr
    rules = bad_files / "r.yaml"
    rules.write_text("rules:\n  - id: hi\n    trigger: {message: faces}\n"
                     "    for: {count: 3}\n    actions:\n      - log: owner\n")
    out = run_cli("rules", "test", rules, "--input", bad_files / "ok.mcap", "--all")
    assert out.returncode == 0, out.stderr
    # only who/faces is read (the trigger); 11 messages 10 ms apart, a firing every 3rd
    assert "-- 11 message(s): hi x3" in out.stdout and "0.020s  hi" in out.stdout


def test_replay_graph_replaces_publishers_and_prunes_what_feeds_them(tmp_path, monkeypatch):
    monkeypatch.setenv("IOTRT_STATE_DIR", str(tmp_path))
    graph = load_graph(DOOR)
    path = tmp_path / "a.mcap"
    write_sample(path)
    info = Recording(path).info()
    plan = replay_graph(graph, info, topics=["who/faces", "cam/image"], rate=0,
                        runtime_dir=tmp_path / "run", state_dir=tmp_path / "st")
    g = plan.graph
    assert plan.replaced == ["cam", "who"] and plan.idle == ["faces"]
    assert "cam" not in g.nodes and "faces" not in g.nodes and "replay" in g.nodes
    assert g.nodes["rules"].params["clock"] == "capture"
    assert g.optimize == graph.optimize == 2     # the nodes run as the graph file says (-OO)
    assert g.nodes["rules"].inputs["faces"].queue == REPLAY_QUEUE      # no drops at max
    assert g.nodes["snapshot"].inputs["image"].queue == 1              # frames stay latest-wins
    # the replay node publishes on the addresses the kept nodes dial, and starts first
    cfg = g.node_config("rules")
    assert g.nodes["replay"].params["topics"]["who/faces"]["address"] == \
        cfg["inputs"]["faces"]["address"]
    readers = [n.id for n in g.nodes.values()
               if any(w.topic == "who/faces" for w in n.inputs.values())]
    assert "rules" in readers
    assert g.nodes["replay"].params["topics"]["who/faces"]["subscribers"] == len(readers)
    assert "replay" in g.dependencies()["rules"]
    procs = g.process_dependencies()
    assert "replay" in procs[g.nodes["rules"].process] and procs["replay"] == set()
    assert all(g.process_config(p) for p in g.processes())
    # every recorded topic by default: the rules node is replaced too
    plan = replay_graph(graph, info, runtime_dir=tmp_path / "run", state_dir=tmp_path / "st")
    assert plan.replaced == ["cam", "rules", "who"] and "rules" not in plan.graph.nodes
    with pytest.raises(ReplayError, match="no topic lock/state in the recording"):
        replay_graph(graph, info, topics=["lock/state"], runtime_dir=tmp_path / "run",
                     state_dir=tmp_path / "st")


# --- the clip node ---------------------------------------------------------------------------

def test_ring_memory_stays_within_its_bound_measured():
    """tracemalloc measures what the ring really holds, against its bound."""
    from iotrt.recording import encode

    entries = []
    for k in range(40):
        kind, payload = encode(Envelope("cam/image", k, k, "cam", [], frame(k, 480, 640)))
        entries.append(clip_node.Entry("cam/image", kind, payload, k, k * 33_000_000, k))
    limit = 400_000
    tracemalloc.start()
    try:
        ring = clip_node.Ring(limit, span_s=3600)
        base = tracemalloc.get_traced_memory()[0]
        peak = 0
        for e in entries:
            # copies: the ring must own its payloads (a reference would not be measured)
            ring.add(clip_node.Entry(e.topic, e.kind, bytes(bytearray(e.payload)), e.seq,
                                     e.stamp_ns, e.log_time_ns))
            peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert ring.evicted > 0 and ring.peak <= limit
    assert peak <= limit, f"the ring held {peak} bytes, its bound is {limit}"


def test_clip_node_writes_before_and_after(tmp_path):
    node = Node.for_test(clip_node, params={"dir": str(tmp_path), "before_max_s": 2.0,
                                            "ring_mb": 50.0})
    t0 = 10_000_000_000
    period = 100_000_000                       # 10 fps
    for k in range(40):                        # 4 s of frames before the event
        node.feed("image", frame(k), stamp_ns=t0 + k * period, src="cam")
    event_ns = t0 + 39 * period
    node.feed("event", {"before": 1.5, "after": 0.5, "reason": "visitor at/the door"},
              stamp_ns=event_ns, src="rules")
    for k in range(40, 50):
        node.feed("image", frame(k), stamp_ns=t0 + k * period, src="cam")
    node.run()
    (kind, f), = [r for r in node.records if r[0] == "clip_saved"]
    assert f["reason"] == "visitor_at_the_door" and f["before_s"] == 1.5
    stamps = [m.stamp_ns for m in Recording(f["path"]).messages()]
    assert min(stamps) == event_ns - 15 * period and max(stamps) == event_ns + 5 * period
    assert f["frames"] == len(stamps) == 21 and f["ring_peak_bytes"] <= f["ring_limit_bytes"]


def test_clip_node_ignores_bad_before_after(tmp_path):
    node = Node.for_test(clip_node, params={"dir": str(tmp_path), "before_s": 1.0,
                                            "after_s": 0.0})
    node.feed("image", frame(0), stamp_ns=1_000_000_000, src="cam")
    node.feed("event", {"before": float("nan"), "after": "forever"}, stamp_ns=1_000_000_000)
    node.feed("image", frame(1), stamp_ns=1_100_000_000, src="cam")
    node.run()
    (_, f), = [r for r in node.records if r[0] == "clip_saved"]
    assert f["before_s"] == 1.0 and f["after_s"] == 0.0 and f["frames"] == 1


def test_clip_keeps_only_the_topics_asked_for(tmp_path):
    node = Node.for_test(clip_node, params={"dir": str(tmp_path), "after_s": 0.0})
    for k in range(3):
        node.feed("image", frame(k), stamp_ns=(k + 1) * 100_000_000, src="cam")
        node.feed("faces", {"faces": []}, stamp_ns=(k + 1) * 100_000_000, src="who")
    node.feed("event", {"before": 1, "topics": ["who/faces"]}, stamp_ns=300_000_000)
    node.feed("faces", {"faces": []}, stamp_ns=400_000_000, src="who")
    node.run()
    (_, f), = [r for r in node.records if r[0] == "clip_saved"]
    assert {m.topic for m in Recording(f["path"]).messages()} == {"who/faces"}
    assert f["frames"] == 0 and f["messages"] == 3


def test_hostile_messages_inside_a_valid_file_are_refused(tmp_path):
    """An MCAP file with iotrt's header whose messages lie: each is one clear error."""
    from iotrt.codec import pack

    cases = {"not msgpack": b"\xc1\xc1\xc1", "not a map": pack([1, 2]),
             "seq as text": pack({"seq": "1", "stamp_ns": 1, "src": "a", "trace": [],
                                  "data": None}),
             "stamp past 2^63": pack({"seq": 1, "stamp_ns": (1 << 64) - 1, "src": "a", "trace": [],
                                      "data": None})}
    for name, payload in cases.items():
        path = tmp_path / f"{name}.mcap"
        with RecordWriter(path) as w:
            w.write_encoded("a/b", "msgpack", payload, 0, 0)
        assert Recording(path).info().messages == 1      # the container itself is fine
        with pytest.raises(RecordingError) as exc:
            list(Recording(path).messages())
        assert "\n" not in str(exc.value), name
        with pytest.raises(RecordingError):
            Recording(path).check()                       # what a replay runs first
    path = tmp_path / "jpeg.mcap"
    with RecordWriter(path) as w:
        w.write_encoded("cam/image", "jpeg", pack({"seq": 0, "stamp_ns": 0, "src": "cam",
                                                   "trace": [], "data": b"not a jpeg"}), 0, 0)
    with pytest.raises(RecordingError, match="not a readable JPEG"):
        list(Recording(path).messages())


def test_replay_stops_with_an_error_when_a_frame_is_unreadable(tmp_path):
    """A JPEG that does not decode is only found while playing: the replay node ends, and
    iotrt replay stops the graph and exits 1 instead of waiting for ever."""
    from iotrt.codec import pack

    path = tmp_path / "badframe.mcap"
    with RecordWriter(path) as w:
        w.write_encoded("cam/image", "jpeg", pack({"seq": 0, "stamp_ns": 1, "src": "cam",
                                                   "trace": [], "data": b"not a jpeg"}), 0, 1)
    env = dict(os.environ, IOTRT_RUNTIME_DIR=f"/tmp/iotrt-bf-{os.getpid()}")
    try:
        out = run_cli("replay", path, "--graph", DOOR, "--rate", "max", "--state-dir",
                      tmp_path / "st", env=env)
    finally:
        shutil.rmtree(env["IOTRT_RUNTIME_DIR"], ignore_errors=True)
    assert out.returncode == 1, out.stderr
    assert "not a readable JPEG" in out.stderr


def test_recordings_are_private(tmp_path):
    write_sample(tmp_path / "a.mcap")
    assert (tmp_path / "a.mcap").stat().st_mode & 0o777 == 0o600


def test_a_frame_the_jpeg_encoder_refuses_is_skipped_and_the_recording_goes_on(tmp_path):
    """A frame wider than JPEG allows (65,500 pixels) is one message refused, not a recording
    that cannot be written: the recorder, a clip and `iotrt record` go on."""
    wide = np.zeros((1, 70_000, 3), np.uint8)
    with RecordWriter(tmp_path / "a.mcap") as w:
        w.write(Envelope("cam/image", 0, 1, "cam", [], np.zeros((4, 4, 3), np.uint8)))
        with pytest.raises(NotRecordable, match="message 1 on cam/image: cannot JPEG-encode"):
            w.write(Envelope("cam/image", 1, 2, "cam", [], wide))
        w.write(Envelope("cam/image", 2, 3, "cam", [], np.zeros((4, 4, 3), np.uint8)))
    assert [m.seq for m in Recording(tmp_path / "a.mcap").messages()] == [0, 2]


def _patched_jpeg(height: int, width: int) -> bytes:
    """An 8x8 JPEG whose frame header claims height x width (a decompression bomb)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_a_jpeg_claiming_a_huge_frame_is_skipped_before_decoding_and_the_read_goes_on(
        tmp_path, caplog):
    """A 1 KB file must not make the reader decode 30000x30000 pixels (2.7 GB); that one
    message is skipped, counted and logged, and the messages after it are read (the refusal
    used to end the read)."""
    import logging

    from iotrt.codec import pack
    from iotrt.recording import Info

    path = tmp_path / "bomb.mcap"
    with RecordWriter(path) as w:
        w.write(Envelope("cam/image", 0, 1, "cam", [], np.zeros((4, 4, 3), np.uint8)))
        w.write_encoded("cam/image", "jpeg", pack({"seq": 1, "stamp_ns": 2, "src": "cam",
                                                   "trace": [], "data": _patched_jpeg(
                                                       30000, 30000)}), 1, 2)
        w.write(Envelope("cam/image", 2, 3, "cam", [], np.zeros((4, 4, 3), np.uint8)))
        w.write(Envelope("who/faces", 3, 4, "who", [], {"faces": []}))
    assert path.stat().st_size < 8192
    info = Info(path, 0, {})
    with caplog.at_level(logging.WARNING, logger="iotrt.recording"):
        got = [(m.topic, m.seq) for m in Recording(path).messages(info=info)]
    assert got == [("cam/image", 0), ("cam/image", 2), ("who/faces", 3)]
    assert info.topics["cam/image"].skipped == 1 and info.skipped == 1
    assert info.topics["cam/image"].count == 3           # counted as recorded, not decoded
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "message 1 on cam/image" in lines[0] \
        and "30000x30000 pixels" in lines[0], lines
    checked = Recording(path).check()                      # header read only: same verdict
    assert checked.skipped == 1 and checked.messages == 4


def test_a_wide_frame_written_is_read_back(tmp_path):
    """The writer JPEG-encodes up to 65,500 px a side; the reader refused over 8192 a side,
    so a 9000x64 panorama strip made a recording iotrt could not read (the read failed)."""
    strip = np.zeros((64, 9000, 3), np.uint8)
    strip[:, ::100] = 255
    with RecordWriter(tmp_path / "a.mcap") as w:
        w.write(Envelope("pano/image", 0, 1, "pano", [], strip))
        w.write(Envelope("pano/meta", 1, 2, "pano", [], {"n": 1}))
    got = list(Recording(tmp_path / "a.mcap").messages())
    assert [m.topic for m in got] == ["pano/image", "pano/meta"]
    assert got[0].data.shape == (64, 9000, 3) and got[1].data == {"n": 1}


def test_a_frame_over_the_pixel_bound_is_not_written_and_the_recording_goes_on(tmp_path):
    """What the reader would not decode is not written: NotRecordable, that message only."""
    from iotrt.recording import MAX_FRAME_PIXELS

    big = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (8193, 8192, 3))   # no memory
    assert big.shape[0] * big.shape[1] > MAX_FRAME_PIXELS
    with RecordWriter(tmp_path / "a.mcap") as w:
        w.write(Envelope("cam/image", 0, 1, "cam", [], np.zeros((4, 4, 3), np.uint8)))
        with pytest.raises(NotRecordable, match=r"message 1 on cam/image: a 8192x8193 frame "
                                                r"has more pixels than a recording holds"):
            w.write(Envelope("cam/image", 1, 2, "cam", [], big))
        w.write(Envelope("cam/image", 2, 3, "cam", [], np.zeros((4, 4, 3), np.uint8)))
    assert [m.seq for m in Recording(tmp_path / "a.mcap").messages()] == [0, 2]


def test_a_message_larger_than_the_reader_takes_is_not_written(tmp_path):
    """A raw array of 257 MB (shared memory carries up to 1 GiB) made a chunk over the
    reader's RECORD_LIMIT: the file read as truncated from there on ("was the recorder
    killed?"). It is one NotRecordable message now, and the messages after it are kept."""
    from iotrt.recording import MAX_PAYLOAD, RECORD_LIMIT

    assert MAX_PAYLOAD < RECORD_LIMIT
    with RecordWriter(tmp_path / "a.mcap", frames="raw") as w:
        w.write(Envelope("t/a", 0, 1, "t", [], {"n": 0}))
        with pytest.raises(NotRecordable, match=r"message 1 on t/big: .* bytes, more than a "
                                                r"recording holds in one message"):
            w.write(Envelope("t/big", 1, 2, "t", [], np.zeros(RECORD_LIMIT + 1, np.uint8)))
        w.write(Envelope("t/a", 2, 3, "t", [], {"n": 2}))
    assert [m.seq for m in Recording(tmp_path / "a.mcap").messages()] == [0, 2]


def test_a_compressed_chunk_is_refused_before_it_is_inflated(tmp_path):
    """RECORD_LIMIT bounds what a file stores; a 10 KB zstd chunk inflating to 300 MB must
    not get round it. iotrt writes uncompressed chunks, so a compressed one is refused."""
    from mcap.writer import CompressionType

    from iotrt.codec import pack
    from iotrt.recording import PROFILE

    path = tmp_path / "zstd.mcap"
    with open(path, "wb") as f:
        w = Writer(f, compression=CompressionType.ZSTD)
        w.start(profile=PROFILE, library="test")
        w.add_metadata("iotrt", {"format": "1"})
        schema = w.register_schema("iotrt/Envelope", "jsonschema", b"{}")
        cid = w.register_channel("a/b", "msgpack", schema, {"iotrt.data": "msgpack"})
        w.add_message(cid, 0, pack({"seq": 0, "stamp_ns": 0, "src": "a", "trace": [],
                                    "data": bytes(4 << 20)}), 0)
        w.finish()
    assert path.stat().st_size < 64 << 10
    with pytest.raises(RecordingError, match="zstd-compressed chunk"):
        Recording(path).info()
    with pytest.raises(RecordingError, match="zstd-compressed chunk"):
        list(Recording(path, partial=True).messages())


def test_a_damaged_stats_record_loses_the_drops_not_the_recording(tmp_path):
    from mcap.writer import CompressionType

    from iotrt.recording import PROFILE

    for name, stats in {"deep": "[" * 200_000, "not json": "{drops", "a list": "[1]"}.items():
        path = tmp_path / f"{name}.mcap"
        with open(path, "wb") as f:
            w = Writer(f, compression=CompressionType.NONE)
            w.start(profile=PROFILE, library="test")
            w.add_metadata("iotrt", {"format": "1"})
            w.add_metadata("iotrt.stats", {"drops": stats})
            w.finish()
        info = Recording(path).info()
        assert info.complete and info.drops == 0, name
