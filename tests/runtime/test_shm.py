"""Shared-memory frame rings: never torn, never leaked, transparent to subscribers."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from iotrt import shm
from iotrt.bus import Publisher, Subscriber, short_ipc_address
from iotrt.codec import Envelope, FrameOverwritten, decode, encode


def segments(address: str) -> list[str]:
    prefix = shm.segment_prefix(address)
    return sorted(n for n in os.listdir(shm.SHM_DIR) if n.startswith(prefix + "-"))


def wait_until(predicate, timeout_s=10.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def ring():
    writer = shm.RingWriter(shm.segment_prefix(f"test://{os.getpid()}/{time.monotonic_ns()}"),
                            slots=2, threshold=1024)
    readers = shm.RingReaders()
    try:
        yield writer, readers
    finally:
        readers.close()
        writer.close()


def frame(i: int, n: int = 4096) -> np.ndarray:
    return np.full(n, i % 251, np.uint8)


def send(writer, i):
    return encode(Envelope("t/o", i, 0, "t", [], frame(i)), writer.sink)


def test_frames_roundtrip_as_private_read_only_copies(ring):
    writer, readers = ring
    buf = send(writer, 7)
    assert len(buf) < 200  # only the descriptor travels
    arr = decode(buf, readers.read).data
    assert np.array_equal(arr, frame(7)) and not arr.flags.writeable
    send(writer, 8), send(writer, 9)  # the slot is reused...
    assert np.array_equal(arr, frame(7))  # ...but the copy the reader holds is its own


def test_an_overwritten_slot_is_never_returned(ring):
    writer, readers = ring
    old = send(writer, 1)
    send(writer, 2)
    send(writer, 3)  # 2 slots: frame 3 reuses frame 1's slot
    with pytest.raises(FrameOverwritten, match="overwritten before it was read"):
        decode(old, readers.read)


def test_a_slot_rewritten_during_the_copy_is_detected(ring, monkeypatch):
    """The writer starts on the slot between the reader's first check and its copy."""
    writer, readers = ring
    target = send(writer, 1)
    send(writer, 2)
    real_fence = shm._fence
    calls = []

    def racing_fence():
        calls.append(1)
        if len(calls) == 1:  # the reader's fence before it copies
            send(writer, 3)  # lands in frame 1's slot
        real_fence()

    monkeypatch.setattr(shm, "_fence", racing_fence)
    with pytest.raises(FrameOverwritten, match="while being read"):
        decode(target, readers.read)


def test_a_slot_being_written_is_refused(ring):
    writer, readers = ring
    buf = send(writer, 1)
    name, slot = writer.name, 1 % writer.slots
    writer._seqs[slot] += 1  # odd: as if the writer were half-way through the next frame
    with pytest.raises(FrameOverwritten):
        decode(buf, readers.read)
    assert name == writer.name


def test_growing_frames_start_a_new_generation(ring):
    writer, readers = ring
    small = decode(send(writer, 1), readers.read).data
    first = writer.name
    big = np.arange(100_000, dtype=np.float32)
    got = decode(encode(Envelope("t/o", 2, 0, "t", [], big), writer.sink), readers.read).data
    assert writer.name != first and not os.path.exists(os.path.join(shm.SHM_DIR, first))
    assert np.array_equal(got, big) and len(small) == 4096


def test_descriptor_cannot_point_outside_the_ring(ring):
    import msgpack

    from iotrt.codec import EXT_SHM, DecodeError

    writer, readers = ring
    send(writer, 1)
    for desc in ([writer.name, 5, 2, "|u1", [10]],              # slot out of range
                 [writer.name, 1, 2, "|u1", [10 ** 9]],         # larger than a slot
                 ["../../etc/passwd", 0, 2, "|u1", [1]],        # not a ring name
                 [writer.name, 1, 2, "|O", [1]]):               # not a wire dtype
        buf = msgpack.packb([1, "t/o", 0, 0, "t", [], msgpack.ExtType(EXT_SHM,
                                                                       msgpack.packb(desc))])
        with pytest.raises(DecodeError):
            decode(buf, readers.read)


def test_concurrent_reader_process_never_sees_a_torn_frame(rundir, peer):
    address = short_ipc_address(rundir, "g", "cam", "image")
    with Publisher(address, "cam/image", "cam", shm_slots=2) as pub:
        checker = peer("frame_checker", address, 2.0)
        checker.wait_line('"ready"')
        wait_until(lambda: pub.subscribers, what="subscriber")
        i = 0
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            pub.publish({"array": np.full(1 << 20, pub.seq % 251, np.uint8)})
            i += 1
        result = checker.wait_for(lambda p: [m for m in p.json_lines() if "good" in m],
                                  what="checker result")[0]
    assert result["corrupt"] == 0
    assert result["good"] > 10
    # frames the reader was too late for were counted as drops, not returned
    assert result["stats"]["msgs"] == result["good"]


def test_sigkilled_publisher_leaves_no_segment_after_the_next_start(rundir, peer):
    address = short_ipc_address(rundir, "g", "cam", "image")
    first = peer("pub", address, 3, 1 << 20)
    pid = first.wait_for(lambda p: [m["pid"] for m in p.json_lines()
                                    if isinstance(m, dict) and "pid" in m], what="published")[0]
    assert segments(address) == [f"{shm.segment_prefix(address)}-{pid}-1"]
    first.kill()
    assert len(segments(address)) == 1  # SIGKILL ran no clean-up...
    second = peer("pub", address, 1, 1 << 20)
    pid2 = second.wait_for(lambda p: [m["pid"] for m in p.json_lines()
                                      if isinstance(m, dict) and "pid" in m])[0]
    # ...the next publisher on the address reclaimed it
    assert segments(address) == [f"{shm.segment_prefix(address)}-{pid2}-1"]
    second.kill()
    assert shm.reclaim(address) == 1 and segments(address) == []


def test_reader_exit_does_not_remove_the_segment(rundir, peer):
    """The multiprocessing.shared_memory pitfall: a reader process exiting must not unlink."""
    address = short_ipc_address(rundir, "g", "cam", "image")
    with Publisher(address, "cam/image", "cam") as pub:
        reader = peer("sub", address, 1, 2)
        reader.wait_line('"ready"')
        wait_until(lambda: pub.subscribers, what="subscriber")
        pub.publish({"array": np.zeros(1 << 20, np.uint8)})
        assert reader.wait_exit(10) == 0
        assert len(segments(address)) == 1
        with Subscriber(address) as sub:
            wait_until(lambda: sub.connected, what="connection")
            pub.publish({"array": np.ones(1 << 20, np.uint8)})
            env = sub.recv(timeout_s=10)
            assert env.data["array"].sum() == 1 << 20
    assert segments(address) == []  # a clean close removes it


def test_frames_a_reader_still_holds_are_never_recycled(ring):
    """Readers copy into pooled buffers; a buffer is reused only when nothing references it."""
    writer, readers = ring
    held = []
    for i in range(12):
        arr = decode(send(writer, i), readers.read).data
        held.append(arr[:10])  # a slice keeps its buffer alive
        if i % 3 == 0:
            held.pop(0)
    for view in held:
        assert (view == view[0]).all()
    values = [int(v[0]) for v in held]
    assert values == sorted(values) and len(set(values)) == len(values)


def test_loaned_frame_is_published_without_a_copy_and_frozen(rundir):
    address = short_ipc_address(rundir, "g", "cam", "image")
    with Publisher(address, "cam/image", "cam") as pub, Subscriber(address, queue=4) as sub:
        wait_until(lambda: sub.connected, what="connection")
        frame = pub.loan((480, 640, 3))
        frame[:] = 42  # e.g. cv2.VideoCapture.read(image=frame)
        pub.publish({"image": frame})
        with pytest.raises(ValueError):
            frame[0, 0, 0] = 1  # the bus owns it now
        abandoned = pub.loan((480, 640, 3))
        abandoned[:] = 9
        pub.publish({"image": np.full((480, 640, 3), 7, np.uint8)})  # must not use that slot
        abandoned[:] = 10  # the producer may still write into it
        got = [sub.recv(timeout_s=5).data["image"] for _ in range(2)]
    assert [int(g.mean()) for g in got] == [42, 7]


def test_loan_on_a_tcp_output_is_a_plain_array():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Publisher(f"tcp://127.0.0.1:{port}", "cam/image", "cam") as pub:
        frame = pub.loan((4, 4), "float32")
        assert frame.flags.writeable and frame.dtype == np.float32
