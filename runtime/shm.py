"""Shared-memory frame rings: large arrays cross process boundaries without going through NNG.

Each ipc output owns one ring: a file under /dev/shm holding `slots` equally sized slots. To
publish an array of at least `threshold` bytes, the writer copies it into the next slot (round
robin) and the NNG message carries only a descriptor: (segment, slot, sequence, dtype, shape).

Read contract: COPY, THEN CHECK THE SEQUENCE (a seqlock). Every slot has a 64-bit sequence word.
The writer sets it to an odd value before it writes the slot and to the descriptor's even value
when the slot is complete. A reader checks that the word equals the descriptor's value, copies
the data into private memory, and checks the word again; if either check fails the writer has
(re)started writing that slot, the copy may be torn, and the reader raises `FrameOverwritten`
(the subscriber counts it as a drop) instead of returning it. So:

- a reader never returns torn or overwritten data as valid;
- the writer never waits for readers (a slow reader loses frames, like any latest-wins input);
- a frame survives `slots - 1` newer publishes; with the default 6 slots and the default input
  queue of 2 a reader keeping up with the stream never loses one. Raise `slots` for deep queues.
- readers receive a private, read-only copy (`arr.flags.writeable is False`), the same contract
  as arrays that travelled inline.

Memory ordering: on x86 stores and loads are not reordered among themselves. On weakly ordered
CPUs (ARM) the sequence word and the data are separated by `_fence()`, a mutex release/acquire
pair, which the C library implements with barrier instructions.

Lifetime: segments are named `iotrt-<hash of the output address>-<pid>-<generation>` and opened
with os.open + mmap (not multiprocessing.shared_memory, whose resource tracker would unlink a
segment when a *reader* exits). A publisher that starts on an address first removes every
segment left for that address (its predecessor may have been SIGKILLed), which is safe because
it has just bound the address, so no other live publisher owns it. `reclaim(address)` does the
same for a supervisor cleaning up after a dead node. When a frame outgrows the slots, the
writer starts a new generation and unlinks the old one.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
import sys
import threading
from collections import OrderedDict

import msgpack
import numpy as np

from iotrt.codec import EXT_SHM, DecodeError, FrameOverwritten, parse_array_header, wire_dtype

SHM_DIR = "/dev/shm"
DEFAULT_THRESHOLD = 64 * 1024
DEFAULT_SLOTS = 6
MAGIC = b"IOTRSHM1"
HEADER = struct.Struct("<8sIIQ")  # magic, slots, reserved, slot_size
HEADER_SIZE = 64
SEQ_STRIDE = 64  # one cache line per slot's sequence word: no false sharing between slots
ALIGN = 4096
NAME_RE = re.compile(r"^iotrt-[0-9a-f]{12}-\d{1,10}-\d{1,10}$")
POOL_PER_SHAPE = 4  # private buffers kept per frame shape for reuse
POOL_SHAPES = 8


_fence_lock = threading.Lock()
_fence_lock.acquire()


def _fence() -> None:
    # release then acquire: a full barrier on every platform CPython's mutexes support
    _fence_lock.release()
    _fence_lock.acquire()


def segment_prefix(address: str) -> str:
    return "iotrt-" + hashlib.blake2s(address.encode(), digest_size=6).hexdigest()


def reclaim(address_or_prefix: str) -> int:
    """Unlink every segment of an output (address or prefix); returns how many were removed."""
    prefix = (address_or_prefix if address_or_prefix.startswith("iotrt-")
              else segment_prefix(address_or_prefix))
    removed = 0
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(prefix + "-") and NAME_RE.match(name):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _layout(slots: int, slot_size: int) -> tuple[int, int]:
    """(offset of slot 0's data, total segment size)."""
    data0 = -(-(HEADER_SIZE + slots * SEQ_STRIDE) // ALIGN) * ALIGN
    return data0, data0 + slots * slot_size


class RingWriter:
    """The publisher's side of one output's ring. Not thread-safe: the Publisher serialises."""

    def __init__(self, prefix: str, *, slots: int = DEFAULT_SLOTS,
                 threshold: int = DEFAULT_THRESHOLD):
        if slots < 2:
            raise ValueError(f"a frame ring needs at least 2 slots, not {slots}")
        self.prefix, self.slots, self.threshold = prefix, slots, threshold
        self.generation = 0
        self.name: str | None = None
        self._map: mmap.mmap | None = None
        self._seqs: np.ndarray | None = None
        self.slot_size = 0
        self._count = 0
        self._loan: tuple[np.ndarray, int, int] | None = None
        reclaim(prefix)

    def _create(self, nbytes: int) -> None:
        self.close()
        self.generation += 1
        self.slot_size = -(-nbytes // ALIGN) * ALIGN
        self.name = f"{self.prefix}-{os.getpid()}-{self.generation}"
        data0, total = _layout(self.slots, self.slot_size)
        path = os.path.join(SHM_DIR, self.name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, total)
            self._map = mmap.mmap(fd, total)
        except OSError:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        self._data0 = data0
        self._map[:HEADER_SIZE] = HEADER.pack(MAGIC, self.slots, 0, self.slot_size).ljust(
            HEADER_SIZE, b"\0")
        self._seqs = np.ndarray((self.slots,), "<u8", self._map, HEADER_SIZE,
                                (SEQ_STRIDE,))

    def _begin(self, nbytes: int, avoid: int | None = None) -> tuple[int, int]:
        """Claim the next slot for writing: (slot, seq), the slot marked odd (being written)."""
        if nbytes > self.slot_size:
            self._create(nbytes)
            avoid = None
        self._count += 1
        slot = self._count % self.slots
        if slot == avoid:  # never write over a frame the producer is still filling
            self._count += 1
            slot = self._count % self.slots
        seq = 2 * self._count
        self._seqs[slot] = seq - 1
        _fence()
        return slot, seq

    def _commit(self, slot: int, seq: int, dtype: np.dtype, shape: tuple) -> msgpack.ExtType:
        _fence()
        self._seqs[slot] = seq
        return msgpack.ExtType(EXT_SHM, msgpack.packb([self.name, slot, seq, dtype.str,
                                                       list(shape)]))

    def loan(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """A writable array inside the next slot, for a producer to fill in place (e.g.
        cv2.VideoCapture.read(image=...)). Publishing that very array sends it without a copy;
        from then on it is read-only. A new loan abandons an unpublished one."""
        dtype = wire_dtype(np.dtype(dtype))
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._loan = None
        slot, seq = self._begin(nbytes)
        view = np.ndarray(shape, dtype, self._map, self._data0 + slot * self.slot_size)
        self._loan = (view, slot, seq)
        return view

    def sink(self, arr: np.ndarray) -> msgpack.ExtType | None:
        """codec array_sink: put `arr` in the next slot, or None to send it inline."""
        loan = self._loan
        if loan is not None and arr is loan[0]:
            view, slot, seq = loan
            self._loan = None
            view.flags.writeable = False  # the bus owns it now: later writes would tear it
            return self._commit(slot, seq, view.dtype, view.shape)
        if arr.nbytes < self.threshold:
            return None
        dtype = wire_dtype(arr.dtype)
        slot, seq = self._begin(arr.nbytes, avoid=loan[1] if loan is not None else None)
        view = np.ndarray(arr.shape, dtype, self._map, self._data0 + slot * self.slot_size)
        np.copyto(view, arr, casting="no" if dtype == arr.dtype else "equiv")
        del view
        return self._commit(slot, seq, dtype, arr.shape)

    def close(self) -> None:
        self._loan = None
        if self._map is not None:
            self._seqs = None
            try:
                self._map.close()
            except BufferError:
                pass  # a loaned frame is still referenced: the mapping goes when it does
            self._map = None
            try:
                os.unlink(os.path.join(SHM_DIR, self.name))
            except FileNotFoundError:
                pass


class _Mapping:
    def __init__(self, name: str):
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise DecodeError(f"shared-memory segment {name} is not a frame ring")
            self.map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, self.slots, _, self.slot_size = HEADER.unpack_from(self.map)
        self.data0, total = _layout(self.slots, self.slot_size)
        if magic != MAGIC or total > size:
            self.map.close()
            raise DecodeError(f"shared-memory segment {name} is not a frame ring")
        self.seqs = np.ndarray((self.slots,), "<u8", self.map, HEADER_SIZE, (SEQ_STRIDE,))

    def close(self) -> None:
        self.seqs = None
        self.map.close()


class RingReaders:
    """A subscriber's view of the rings it receives descriptors for (one per publisher)."""

    def __init__(self) -> None:
        self._maps: dict[str, tuple[str, _Mapping]] = {}  # prefix -> (segment name, mapping)
        self._pool: OrderedDict[tuple, list[np.ndarray]] = OrderedDict()

    def _private_buffer(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """A writable array to copy a frame into: a pooled one nobody references any more,
        or a new one. Reusing buffers avoids the page faults of fresh large allocations,
        which cost more than the copy itself."""
        key = (dtype.str, shape)
        pool = self._pool.get(key)
        if pool is None:
            pool = self._pool[key] = []
            if len(self._pool) > POOL_SHAPES:
                self._pool.popitem(last=False)
        self._pool.move_to_end(key)
        for base in pool:
            # referenced only by the pool list, this loop and getrefcount's argument: every
            # array handed out on top of it (views keep their base alive) is gone
            if sys.getrefcount(base) == 3:
                return base
        base = np.empty(shape, dtype)
        if len(pool) < POOL_PER_SHAPE:
            pool.append(base)
        return base

    def _mapping(self, name: str) -> _Mapping:
        prefix = name.rsplit("-", 2)[0]
        cached = self._maps.get(prefix)
        if cached is not None and cached[0] == name:
            return cached[1]
        if cached is not None:  # the publisher restarted or grew its slots
            cached[1].close()
            del self._maps[prefix]
        try:
            m = _Mapping(name)
        except FileNotFoundError as exc:
            # gone: its publisher replaced it since (restart or larger frames)
            raise FrameOverwritten(f"segment {name} no longer exists") from exc
        self._maps[prefix] = (name, m)
        return m

    def read(self, payload: bytes) -> np.ndarray:
        """codec shm_reader: descriptor -> private read-only copy, or FrameOverwritten."""
        try:
            desc = msgpack.unpackb(payload, raw=False)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"bad shared-memory descriptor: {exc}") from exc
        if not (isinstance(desc, list) and len(desc) == 5):
            raise DecodeError("bad shared-memory descriptor")
        name, slot, seq, dtype_str, shape = desc
        if not (isinstance(name, str) and NAME_RE.match(name)):
            raise DecodeError(f"bad shared-memory segment name {name!r}")
        m = self._mapping(name)
        if not (type(slot) is int and 0 <= slot < m.slots and type(seq) is int):
            raise DecodeError(f"bad slot {slot!r} for segment {name}")
        dtype, shape, nbytes = parse_array_header([dtype_str, shape])
        if nbytes > m.slot_size:
            raise DecodeError(f"frame of {nbytes} bytes does not fit a slot of {m.slot_size}")
        if int(m.seqs[slot]) != seq:
            raise FrameOverwritten(f"slot {slot} of {name} was overwritten before it was read")
        _fence()
        src = np.ndarray(shape, dtype, m.map, m.data0 + slot * m.slot_size)
        base = self._private_buffer(shape, dtype)
        np.copyto(base, src)
        del src
        _fence()
        if int(m.seqs[slot]) != seq:
            raise FrameOverwritten(f"slot {slot} of {name} was overwritten while being read")
        out = base.view()
        out.flags.writeable = False
        return out

    def close(self) -> None:
        for _, m in self._maps.values():
            m.close()
        self._maps.clear()
        self._pool.clear()

