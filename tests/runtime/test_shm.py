"""Shared-memory frame rings: never torn, never leaked, transparent to subscribers."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from helpers import wait_for

from iotrt import shm
from iotrt.bus import Publisher, Subscriber, short_ipc_address
from iotrt.codec import Envelope, FrameOverwritten, decode, encode


def segments(address: str) -> list[str]:
    prefix = shm.segment_prefix(address)
    return sorted(n for n in os.listdir(shm.SHM_DIR) if n.startswith(prefix + "-"))


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


def slot_of(buf: bytes) -> int | None:
    """The ring slot a message's frame went to (None: sent inline)."""
    import msgpack

    from iotrt.codec import EXT_SHM

    frame = msgpack.unpackb(buf, raw=False, strict_map_key=False)[6]
    if isinstance(frame, msgpack.ExtType) and frame.code == EXT_SHM:
        return shm.DESC_HEAD.unpack_from(frame.data)[0]
    return None


def test_frames_arrive_as_read_only_leased_views(ring):
    writer, readers = ring
    buf = send(writer, 7)
    assert len(buf) < 200  # only the descriptor travels
    arr = decode(buf, readers.read).data
    assert np.array_equal(arr, frame(7)) and not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0] = 1


def test_a_leased_slot_is_never_overwritten(ring):
    writer, readers = ring  # 2 slots
    first = send(writer, 1)
    held = decode(first, readers.read).data[:100]  # a slice holds the lease too
    slots = [slot_of(send(writer, i)) for i in range(2, 8)]
    assert slot_of(first) not in slots  # the writer skipped the leased slot every time
    assert (held == 1).all()
    del held  # lease released: the slot is used again
    assert slot_of(first) in {slot_of(send(writer, i)) for i in range(8, 10)}


def test_all_slots_leased_falls_back_to_inline(ring):
    writer, readers = ring
    held = [decode(send(writer, i), readers.read).data for i in range(2)]
    buf = send(writer, 2)
    assert slot_of(buf) is None and writer.inline_fallbacks == 1
    assert np.array_equal(decode(buf, readers.read).data, frame(2))  # still correct
    assert [int(h[0]) for h in held] == [0, 1]


def test_an_overwritten_slot_is_never_returned(ring):
    writer, readers = ring
    old = send(writer, 1)
    send(writer, 2)
    send(writer, 3)  # 2 slots, no leases: frame 3 reuses frame 1's slot
    with pytest.raises(FrameOverwritten, match="overwritten before it was read"):
        decode(old, readers.read)


def test_a_slot_being_written_is_refused(ring):
    writer, readers = ring
    old = send(writer, 1)
    send(writer, 2)
    loaned = writer.loan((4096,), np.uint8)  # claims frame 1's slot for a producer to fill
    assert loaned is not None
    loaned[:100] = 99  # half-written
    with pytest.raises(FrameOverwritten):
        decode(old, readers.read)


def test_a_slot_being_claimed_is_refused(ring):
    """The writer's exclusive lock (held while it invalidates a slot) blocks new leases."""
    writer, readers = ring
    old = send(writer, 1)
    slot = slot_of(old)
    assert shm._lock(writer._fd, slot, shm.fcntl.F_WRLCK)
    with pytest.raises(FrameOverwritten, match="being rewritten"):
        decode(old, readers.read)
    shm._lock(writer._fd, slot, shm.fcntl.F_UNLCK)
    assert np.array_equal(decode(old, readers.read).data, frame(1))


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
    good = msgpack.packb([writer.name, "|u1", [10]])
    for desc in (shm.DESC_HEAD.pack(5, 2) + good,                    # slot out of range
                 shm.DESC_HEAD.pack(1, 0) + good,                    # sequence 0: no frame
                 shm.DESC_HEAD.pack(1, 2) + msgpack.packb([writer.name, "|u1", [10 ** 9]]),
                 shm.DESC_HEAD.pack(0, 2) + msgpack.packb(["../../etc/passwd", "|u1", [1]]),
                 shm.DESC_HEAD.pack(1, 2) + msgpack.packb([writer.name, "|O", [1]]),
                 shm.DESC_HEAD.pack(1, 2) + msgpack.packb([writer.name, "|u1", [-1]]),
                 shm.DESC_HEAD.pack(1, 2) + b"\xc1",                 # not msgpack
                 shm.DESC_HEAD.pack(1, 2)[:7]):                      # cut short
        buf = msgpack.packb([1, "t/o", 0, 0, "t", [], msgpack.ExtType(EXT_SHM, desc)])
        with pytest.raises(DecodeError):
            decode(buf, readers.read)
        with pytest.raises(DecodeError):  # the second time too (validated tails are cached)
            decode(buf, readers.read)


def test_a_frame_received_twice_keeps_its_lease_until_both_are_dropped(ring):
    """The slot lock is one per reader: dropping one copy must not end the other's lease."""
    writer, readers = ring  # 2 slots
    buf = send(writer, 1)
    first, second = decode(buf, readers.read).data, decode(buf, readers.read).data
    del first
    slots = {slot_of(send(writer, i)) for i in range(2, 6)}
    assert slot_of(buf) not in slots and (second == 1).all()
    del second
    assert slot_of(buf) in {slot_of(send(writer, i)) for i in range(6, 8)}


def test_concurrent_reader_process_never_sees_a_torn_frame(rundir, peer):
    address = short_ipc_address(rundir, "g", "cam", "image")
    with Publisher(address, "cam/image", "cam", shm_slots=2) as pub:
        checker = peer("frame_checker", address, 2.0)
        checker.wait_line('"ready"')
        wait_for(lambda: pub.subscribers, what="subscriber")
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
    assert pid and len(segments(address)) == 1
    left = segments(address)
    first.kill()
    assert segments(address) == left  # SIGKILL ran no clean-up...
    second = peer("pub", address, 1, 1 << 20)
    second.wait_for(lambda p: [m["pid"] for m in p.json_lines()
                               if isinstance(m, dict) and "pid" in m])
    # ...the next publisher on the address reclaimed it
    assert len(segments(address)) == 1 and segments(address) != left
    second.kill()
    assert shm.reclaim(address) == 1 and segments(address) == []


def test_reader_exit_does_not_remove_the_segment(rundir, peer):
    """The multiprocessing.shared_memory pitfall: a reader process exiting must not unlink."""
    address = short_ipc_address(rundir, "g", "cam", "image")
    with Publisher(address, "cam/image", "cam") as pub:
        reader = peer("sub", address, 1, 2)
        reader.wait_line('"ready"')
        wait_for(lambda: pub.subscribers, what="subscriber")
        pub.publish({"array": np.zeros(1 << 20, np.uint8)})
        assert reader.wait_exit(10) == 0
        assert len(segments(address)) == 1
        with Subscriber(address) as sub:
            wait_for(lambda: sub.connected and pub.subscribers, what="connection on both sides")
            pub.publish({"array": np.ones(1 << 20, np.uint8)})
            env = sub.recv(timeout_s=10)
            assert env.data["array"].sum() == 1 << 20
    assert segments(address) == []  # a clean close removes it


def test_loaned_frame_is_published_without_a_copy_and_frozen(rundir):
    address = short_ipc_address(rundir, "g", "cam", "image")
    with Publisher(address, "cam/image", "cam") as pub, Subscriber(address, queue=4) as sub:
        wait_for(lambda: sub.connected and pub.subscribers, what="connection on both sides")
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


def test_a_dead_readers_leases_are_released(rundir, peer):
    """The kernel drops a SIGKILLed reader's locks: its slots return to the writer."""
    address = short_ipc_address(rundir, "g", "cam", "image")
    with Publisher(address, "cam/image", "cam", shm_slots=2) as pub:
        holder = peer("hold", address, 2)
        holder.wait_line('"ready"')
        wait_for(lambda: pub.subscribers, what="subscriber")
        for i in range(2):
            pub.publish(np.full(1 << 20, i, np.uint8))
        holder.wait_line('"holding"')
        pub.publish(np.zeros(1 << 20, np.uint8))
        assert pub._ring.inline_fallbacks == 1  # both slots leased by the holder
        holder.kill()
        pub.publish(np.zeros(1 << 20, np.uint8))
        assert pub._ring.inline_fallbacks == 1  # a slot was free again


def test_loan_on_a_tcp_output_is_a_plain_array():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Publisher(f"tcp://127.0.0.1:{port}", "cam/image", "cam") as pub:
        frame = pub.loan((4, 4), "float32")
        assert frame.flags.writeable and frame.dtype == np.float32


def _descriptor_for(name: str) -> bytes:
    import msgpack

    from iotrt.codec import EXT_SHM

    desc = shm.DESC_HEAD.pack(0, 1) + msgpack.packb([name, "|u1", [10]])
    return msgpack.packb([1, "t/o", 0, 0, "t", [], msgpack.ExtType(EXT_SHM, desc)])


def test_a_descriptor_naming_a_fifo_is_refused_at_once(ring):
    """Anyone can create a FIFO in /dev/shm under a segment's name; opening it must not wait
    for a writer (the subscriber's loop would hang)."""
    import threading

    from iotrt.codec import DecodeError

    _, readers = ring
    name = f"iotrt-{'ab' * 6}-{'0123456789abcdef'}-{os.getpid()}"
    path = os.path.join(shm.SHM_DIR, name)
    os.mkfifo(path, 0o600)
    try:
        outcome = []

        def read():
            try:
                decode(_descriptor_for(name), readers.read)
            except DecodeError as exc:
                outcome.append(str(exc))
        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(10)
        if t.is_alive():        # release the hung open before failing
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        assert not t.is_alive(), "opening a FIFO named like a segment blocked the reader"
        assert outcome and "not a regular file" in outcome[0]
    finally:
        os.unlink(path)


def test_a_segment_header_claiming_millions_of_slots_is_refused(ring):
    """A sparse file whose header claims 2^24 slots: the reader must not allocate per slot."""
    from iotrt.codec import DecodeError

    _, readers = ring
    name = f"iotrt-{'cd' * 6}-{'0123456789abcdef'}-{os.getpid()}"
    path = os.path.join(shm.SHM_DIR, name)
    slots, slot_size = 1 << 24, 4096
    _, total = shm._layout(slots, slot_size)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, total)                 # sparse: costs no memory or disk
        os.pwrite(fd, shm.HEADER.pack(shm.MAGIC, slots, 0, slot_size), 0)
        with pytest.raises(DecodeError, match="not a frame ring"):
            decode(_descriptor_for(name), readers.read)
    finally:
        os.close(fd)
        os.unlink(path)


def test_an_array_larger_than_a_reader_maps_is_not_put_in_a_ring(ring):
    """Readers refuse a slot over MAX_SLOT_SIZE as "not a frame ring": the writer must not
    make one (a 1 GiB + 1 array went into a ring no reader could open); it goes inline, where
    the bus refuses it for its size (tests/runtime/test_bus.py)."""
    writer, _ = ring
    huge = np.broadcast_to(np.zeros(1, np.uint8), (shm.MAX_SLOT_SIZE + 1,))   # no memory
    assert writer.sink(huge) is None
    assert writer.loan((shm.MAX_SLOT_SIZE + 1,), np.uint8) is None
    assert writer.name is None and writer.slot_size == 0        # no segment was made


def test_the_largest_slot_the_writer_makes_is_one_readers_map(ring, monkeypatch):
    """The writer's bound is the readers' (one constant), checked at a size a test can afford."""
    monkeypatch.setattr(shm, "MAX_SLOT_SIZE", 64 * 1024)
    writer, readers = ring
    at_bound = np.arange(64 * 1024, dtype=np.uint8)
    buf = encode(Envelope("t/o", 1, 0, "t", [], at_bound), writer.sink)
    assert slot_of(buf) is not None
    assert np.array_equal(decode(buf, readers.read).data, at_bound)
    over = np.arange(64 * 1024 + 1, dtype=np.uint8)
    buf = encode(Envelope("t/o", 2, 0, "t", [], over), writer.sink)
    assert slot_of(buf) is None and np.array_equal(decode(buf, readers.read).data, over)
