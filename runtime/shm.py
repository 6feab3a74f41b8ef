"""Shared-memory frame rings: large arrays cross process boundaries without going through NNG.

Each ipc output owns one ring: a file under /dev/shm holding `slots` equally sized slots. To
publish an array of at least `threshold` bytes, the writer puts it in a free slot and the NNG
message carries only a descriptor: slot and sequence (`DESC_HEAD`), then the msgpack tail
[segment, dtype, shape]. A stream repeats its tail, so the writer packs it once and a reader
validates it once (cached by its exact bytes); slot, sequence and lease are checked per frame.

Read contract: LEASES, NO COPY. A reader gets a read-only numpy view straight onto the slot,
and holds a lease on that slot for as long as the view (or any array derived from it) is
alive. The writer never writes a leased slot: it skips to the next free one. Leases are
kernel-managed open-file-description locks (fcntl F_OFD_SETLK) on one byte per slot:

- to reuse a slot the writer takes an exclusive lock on it (refused while any reader holds a
  lease), zeroes its sequence word and lets go, then writes the data and stores the new
  sequence; a reader takes a shared lock (non-blocking) and checks the slot's sequence word
  against the descriptor. If the lock is refused (being claimed) or the sequence differs
  (rewritten since it was published, or being rewritten), the reader raises
  `FrameOverwritten` and the subscriber counts a drop; it never returns torn or overwritten
  data;
- the writer never waits: a leased slot is skipped, and if every slot is leased the frame is
  sent inline over NNG instead (correct, only slower; a warning says to raise `slots` or to
  hold frames for less time). A frame that sits in a subscriber's queue is not leased yet and
  may be overwritten: latest-wins, counted as a drop;
- a lease ends when the last reference to the view goes (a weakref callback on the view's
  base array), or when the reader process dies (the kernel drops its locks), so a crashed
  reader never wedges a slot. Keep `arr.copy()` of a frame you mean to hold for long.

The lock calls are system calls, and a descriptor reaches readers only through NNG (system
calls and mutexes): both order the sequence word and data accesses on weakly ordered CPUs.

Lifetime: segments are named `iotrt-<hash of the output address>-<random token>-<generation>`
and opened with os.open + mmap (not multiprocessing.shared_memory, whose resource tracker would
unlink a segment when a *reader* exits). The token is drawn afresh by each writer, so another
local user cannot squat the name a publisher will create (/dev/shm is shared by everyone); the
create is exclusive and draws a new token if the name is taken anyway. Readers map only
segments of their own user. A publisher that starts on an address first removes every segment
of *this user* left for that address (its predecessor may have been SIGKILLed), which is safe
because it has just bound the address, so no other live publisher owns it. `reclaim(address)`
does the same for a supervisor cleaning up after a dead node; it never raises: a segment it
cannot remove (another user's) is reported in the log and left alone. When a frame outgrows the slots, the writer
starts a new generation and unlinks the old one (readers keep the old mapping while they hold
frames from it).
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import math
import mmap
import os
import re
import stat
import struct
import threading
import weakref
from _blake2 import blake2s  # hashlib's own blake2s; `import hashlib` loads OpenSSL (~3.5 MB)

import msgpack

from iotrt.codec import EXT_SHM, DecodeError, FrameOverwritten, parse_array_header, wire_dtype
from iotrt.lazy import numpy as np  # imported when the first array travels

log = logging.getLogger("iotrt.shm")

SHM_DIR = "/dev/shm"
DEFAULT_THRESHOLD = 64 * 1024
DEFAULT_SLOTS = 6
# What a reader accepts of a segment's header (which another process wrote): a ring never has
# more slots, or larger ones (an 8K RGB frame is 100 MB). The writer keeps to them: a larger
# array goes inline, where the bus refuses it if it is over bus.MAX_MESSAGE.
MAX_SLOTS = 64
MAX_SLOT_SIZE = 1 << 30
MAGIC = b"IOTRSHM2"
HEADER = struct.Struct("<8sIIQ")  # magic, slots, reserved, slot_size
HEADER_SIZE = 64
SEQ = struct.Struct("<Q")  # a slot's sequence word
# A descriptor: slot (u32) and sequence (u64), then msgpack [segment, dtype, shape]. The tail is
# the same for every frame of a stream, so a reader validates it once and caches the result.
DESC_HEAD = struct.Struct("<IQ")
MAX_KINDS = 32  # descriptor tails (segment, dtype, shape) a reader or writer keeps validated
SEQ_STRIDE = 64  # one cache line per slot's sequence word: no false sharing between slots
ALIGN = 4096
NAME_RE = re.compile(r"^iotrt-[0-9a-f]{12}-[0-9a-f]{16}-\d{1,10}$")
CREATE_ATTEMPTS = 8  # fresh tokens to try when a name is taken (only by someone else's file)

__all__ = ["RingWriter", "RingReaders", "FrameOverwritten", "reclaim", "segment_prefix",
           "DEFAULT_THRESHOLD", "DEFAULT_SLOTS"]


class _Flock(ctypes.Structure):
    # struct flock with a 64-bit off_t (CPython builds with large-file support); ctypes lays it
    # out with the platform's C alignment, so this is right on 32- and 64-bit Linux alike
    _fields_ = [("l_type", ctypes.c_short), ("l_whence", ctypes.c_short),
                ("l_start", ctypes.c_int64), ("l_len", ctypes.c_int64),
                ("l_pid", ctypes.c_int)]


_requests: dict[tuple[int, int], bytes] = {}


def _lock(fd: int, slot: int, kind: int) -> bool:
    """Non-blocking OFD lock (F_RDLCK/F_WRLCK) or unlock (F_UNLCK) of slot's byte; False if
    another open file description holds a conflicting lock."""
    req = _requests.get((kind, slot))
    if req is None:
        req = _requests[(kind, slot)] = bytes(_Flock(kind, os.SEEK_SET, slot, 1, 0))
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, req)
    except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: held by someone else
        return False
    return True


def segment_prefix(address: str) -> str:
    return "iotrt-" + blake2s(address.encode(), digest_size=6).hexdigest()


def reclaim(address_or_prefix: str) -> int:
    """Unlink this user's segments of an output (address or prefix); returns how many were
    removed. Never raises: anything else under the output's prefix (another user's file, put
    there to get in the way) is reported in the log and left alone."""
    prefix = (address_or_prefix if address_or_prefix.startswith("iotrt-")
              else segment_prefix(address_or_prefix))
    removed = 0
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(prefix + "-"):
            continue
        path = os.path.join(SHM_DIR, name)
        try:
            owner = os.lstat(path).st_uid
            if owner != os.getuid():
                log.warning("%s belongs to uid %d, another user; left alone (our segments have "
                            "unpredictable names, so it cannot stand in their way)", path, owner)
                continue
            if NAME_RE.match(name):
                os.unlink(path)
                removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove the leftover segment %s: %s", path, exc)
    return removed


def _layout(slots: int, slot_size: int) -> tuple[int, int]:
    """(offset of slot 0's data, total segment size)."""
    data0 = -(-(HEADER_SIZE + slots * SEQ_STRIDE) // ALIGN) * ALIGN
    return data0, data0 + slots * slot_size


class RingWriter:
    """The publisher's side of one output's ring. Not thread-safe: the Publisher serialises."""

    def __init__(self, prefix: str, *, slots: int = DEFAULT_SLOTS,
                 threshold: int = DEFAULT_THRESHOLD):
        if not 2 <= slots <= MAX_SLOTS:
            raise ValueError(f"a frame ring has 2 to {MAX_SLOTS} slots, not {slots}")
        self.prefix, self.slots, self.threshold = prefix, slots, threshold
        self.generation = 0
        self.name: str | None = None
        self.slot_size = 0
        self.inline_fallbacks = 0  # frames sent inline because every slot was leased
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._kinds: dict[tuple, tuple[np.dtype, int]] = {}
        self._tails: dict[tuple, bytes] = {}
        self._next = 0
        self._seq = 0
        self._loan: tuple[np.ndarray, int, bytes] | None = None  # (array, slot, tail)
        reclaim(prefix)

    def _create(self, nbytes: int) -> None:
        self.close()
        self.generation += 1
        self.slot_size = -(-nbytes // ALIGN) * ALIGN
        data0, total = _layout(self.slots, self.slot_size)
        for attempt in range(CREATE_ATTEMPTS):
            self.name = f"{self.prefix}-{os.urandom(8).hex()}-{self.generation}"
            path = os.path.join(SHM_DIR, self.name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                break
            except FileExistsError:
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
        try:
            os.ftruncate(fd, total)
            self._map = mmap.mmap(fd, total)
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        self._fd = fd  # kept open: the slot locks live on it
        self._data0 = data0
        self._map[:HEADER_SIZE] = HEADER.pack(MAGIC, self.slots, 0, self.slot_size).ljust(
            HEADER_SIZE, b"\0")
        self._tails.clear()  # they name the old segment

    def _claim(self, nbytes: int) -> int | None:
        """The next slot no reader leases, invalidated for writing; None if all are leased.

        The exclusive lock is held only while the slot's sequence is zeroed: from then on a
        reader with an old descriptor sees the mismatch, so the data can be written (even
        filled by a producer over many milliseconds) without holding it, and publishing costs
        no system call."""
        if nbytes > self.slot_size:
            self._create(nbytes)
        for _ in range(self.slots):
            slot = self._next
            self._next = (slot + 1) % self.slots
            if self._loan is not None and slot == self._loan[1]:
                continue  # the producer is still filling this one
            if _lock(self._fd, slot, fcntl.F_WRLCK):
                SEQ.pack_into(self._map, HEADER_SIZE + slot * SEQ_STRIDE, 0)  # no descriptor
                #                                                   names seq 0
                _lock(self._fd, slot, fcntl.F_UNLCK)
                return slot
        self.inline_fallbacks += 1
        if self.inline_fallbacks in (1, 100) or self.inline_fallbacks % 10_000 == 0:
            log.warning("%s: all %d slots are held by readers; frame sent inline (%d so far). "
                        "Raise shm_slots, or copy frames that are kept for long",
                        self.name, self.slots, self.inline_fallbacks)
        return None

    def _kind(self, shape: tuple, dtype: object) -> tuple[np.dtype, int]:
        """(wire dtype, byte size) of an array; remembered, since a stream sends the same
        shape and dtype again and again."""
        key = (shape, dtype)
        try:
            kind = self._kinds.get(key)
        except TypeError:  # an unhashable dtype spec (fields as a list): wire_dtype refuses it
            kind = key = None
        if kind is None:
            wire = wire_dtype(np.dtype(dtype))
            kind = (wire, math.prod(shape) * wire.itemsize)
            if key is not None:
                if len(self._kinds) >= MAX_KINDS:
                    self._kinds.clear()
                self._kinds[key] = kind
        return kind

    def _tail(self, shape: tuple, wire: np.dtype) -> bytes:
        """The descriptor's tail, msgpack [segment, dtype, shape], for the current segment."""
        tail = self._tails.get((shape, wire))
        if tail is None:
            tail = msgpack.packb([self.name, wire.str, list(shape)])
            if len(self._tails) >= MAX_KINDS:
                self._tails.clear()
            self._tails[(shape, wire)] = tail
        return tail

    def _commit(self, slot: int, tail: bytes) -> msgpack.ExtType:
        # readers learn the descriptor only through NNG, after this store (and the system
        # calls of the send, which order it after the data on any CPU)
        self._seq += 1
        SEQ.pack_into(self._map, HEADER_SIZE + slot * SEQ_STRIDE, self._seq)
        return msgpack.ExtType(EXT_SHM, DESC_HEAD.pack(slot, self._seq) + tail)

    def _view(self, slot: int, shape: tuple, dtype: np.dtype) -> np.ndarray:
        return np.ndarray(shape, dtype, self._map, self._data0 + slot * self.slot_size)

    def loan(self, shape: tuple, dtype: object) -> np.ndarray | None:
        """A writable array inside a free slot, for a producer to fill in place (e.g.
        cv2.VideoCapture.read(image=...)). Publishing that very array sends it without a copy;
        from then on it is read-only. A new loan abandons an unpublished one. None when the
        frame is below the threshold, above MAX_SLOT_SIZE, or every slot is leased."""
        self._abandon()
        wire, nbytes = self._kind(shape, dtype)
        if not self.threshold <= nbytes <= MAX_SLOT_SIZE:
            return None
        slot = self._claim(nbytes)
        if slot is None:
            return None
        view = self._view(slot, shape, wire)
        self._loan = (view, slot, self._tail(shape, wire))
        return view

    def _abandon(self) -> None:
        if self._loan is not None:
            view = self._loan[0]
            self._loan = None
            view.flags.writeable = False  # its slot keeps seq 0: nobody can read the leftovers

    def sink(self, arr: np.ndarray) -> msgpack.ExtType | None:
        """codec array_sink: put `arr` in a free slot, or None to send it inline."""
        loan = self._loan
        if loan is not None and arr is loan[0]:
            self._loan = None
            arr.flags.writeable = False  # the bus owns it now: later writes would tear it
            return self._commit(loan[1], loan[2])
        if not self.threshold <= arr.nbytes <= MAX_SLOT_SIZE:  # larger: no reader maps it
            return None
        wire, nbytes = self._kind(arr.shape, arr.dtype)
        slot = self._claim(nbytes)
        if slot is None:
            return None
        np.copyto(self._view(slot, arr.shape, wire), arr,
                  casting="no" if wire == arr.dtype else "equiv")
        return self._commit(slot, self._tail(arr.shape, wire))

    def close(self) -> None:
        self._loan = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # a loaned frame is still referenced: the mapping goes when it does
            self._map = None
            os.close(self._fd)
            self._fd = -1
            try:
                os.unlink(os.path.join(SHM_DIR, self.name))
            except FileNotFoundError:
                pass


class _Mapping:
    """A reader's mapping of one segment, and the fd its leases (locks) live on."""

    def __init__(self, name: str):
        self.name = name
        # O_NONBLOCK: a FIFO planted under the segment's name must not block the open (the
        # checks below refuse it)
        self.fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                raise DecodeError(f"shared-memory segment {name} is not a regular file")
            if st.st_uid != os.getuid():   # a publisher of the graph runs as this user
                raise DecodeError(f"shared-memory segment {name} belongs to uid {st.st_uid}, "
                                  f"not to this graph's user")
            size = st.st_size
            if size < HEADER_SIZE:
                raise DecodeError(f"shared-memory segment {name} is not a frame ring")
            self.map = mmap.mmap(self.fd, size, prot=mmap.PROT_READ)
            magic, self.slots, _, self.slot_size = HEADER.unpack_from(self.map)
            self.data0, total = _layout(self.slots, self.slot_size)
            if (magic != MAGIC or total > size or not 0 < self.slots <= MAX_SLOTS
                    or not 0 < self.slot_size <= MAX_SLOT_SIZE):
                raise DecodeError(f"shared-memory segment {name} is not a frame ring "
                                  f"(or from another iotrt version)")
        except BaseException:
            os.close(self.fd)
            raise
        # id(weak reference to a frame) -> (that reference, slot); the reference's callback
        # ends the lease (keyed by id: a weakref to an ndarray is not hashable)
        self.leases: dict[int, tuple[weakref.ref, int]] = {}
        # live leases per slot: the lock is one per open file description, so it is taken
        # by the first lease of a slot and let go with its last (a frame received twice)
        self.held = [0] * self.slots
        self.closing = False
        # callbacks run in whichever thread drops a frame's last reference
        self._lock = threading.Lock()

    def lease(self, slot: int, seq: int, dtype: np.dtype, shape: tuple) -> np.ndarray:
        """The frame `seq` in `slot` as a read-only array that holds a lease on the slot, or
        FrameOverwritten. The caller checked slot < slots and that the frame fits a slot."""
        with self._lock:
            held = self.held[slot]
            if not held and not _lock(self.fd, slot, fcntl.F_RDLCK):
                raise FrameOverwritten(f"slot {slot} of {self.name} is being rewritten")
            if SEQ.unpack_from(self.map, HEADER_SIZE + slot * SEQ_STRIDE)[0] != seq:
                if not held:
                    _lock(self.fd, slot, fcntl.F_UNLCK)
                raise FrameOverwritten(f"slot {slot} of {self.name} was overwritten before it "
                                       f"was read")
            # the array owns the lease: numpy points every view and slice of it back at it,
            # so it is collected (and the lease ended) only when the reader holds none of them
            frame = np.ndarray(shape, dtype, self.map, self.data0 + slot * self.slot_size)
            ref = weakref.ref(frame, self._release)
            self.leases[id(ref)] = (ref, slot)
            self.held[slot] = held + 1
        return frame

    def _release(self, ref: weakref.ref) -> None:
        """The reader dropped the last reference to a frame: end its lease."""
        with self._lock:
            slot = self.leases.pop(id(ref))[1]
            self.held[slot] -= 1
            if self.closing and not self.leases:
                os.close(self.fd)  # also drops any lock left on it
            elif not self.held[slot]:
                _lock(self.fd, slot, fcntl.F_UNLCK)

    def close(self) -> None:
        """Called when the reader moves on; the fd stays open until the last lease ends."""
        with self._lock:
            self.closing = True
            if not self.leases:
                os.close(self.fd)
        # the mmap itself is unmapped when the last frame viewing it is garbage-collected


class RingReaders:
    """A subscriber's view of the rings it receives descriptors for (one per publisher)."""

    def __init__(self) -> None:
        self._maps: dict[str, _Mapping] = {}  # prefix -> mapping of its current segment
        # descriptor tail -> (mapping, dtype, shape), validated: a stream repeats its tail
        self._kinds: dict[bytes, tuple[_Mapping, np.dtype, tuple]] = {}

    def _mapping(self, name: str) -> _Mapping:
        prefix = name.rsplit("-", 2)[0]
        m = self._maps.get(prefix)
        if m is not None and m.name == name:
            return m
        if m is not None:  # the publisher restarted or grew its slots
            m.close()
            del self._maps[prefix]
            self._kinds.clear()  # some name the closed mapping
        try:
            m = _Mapping(name)
        except FileNotFoundError as exc:
            # gone: its publisher replaced it since (restart or larger frames)
            raise FrameOverwritten(f"segment {name} no longer exists") from exc
        self._maps[prefix] = m
        return m

    def _kind(self, tail: bytes) -> tuple[_Mapping, np.dtype, tuple]:
        """Check a descriptor tail, msgpack [segment, dtype, shape], and map its segment."""
        try:
            desc = msgpack.unpackb(tail, raw=False)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"bad shared-memory descriptor: {exc}") from exc
        if not (isinstance(desc, list) and len(desc) == 3):
            raise DecodeError("bad shared-memory descriptor")
        name, dtype_str, shape = desc
        if not (isinstance(name, str) and NAME_RE.match(name)):
            raise DecodeError(f"bad shared-memory segment name {name!r}")
        dtype, shape, nbytes = parse_array_header([dtype_str, shape])
        m = self._mapping(name)
        if nbytes > m.slot_size:
            raise DecodeError(f"frame of {nbytes} bytes does not fit a slot of {m.slot_size}")
        if len(self._kinds) >= MAX_KINDS:
            self._kinds.clear()
        kind = self._kinds[tail] = (m, dtype, shape)
        return kind

    def read(self, payload: bytes) -> np.ndarray:
        """codec shm_reader: descriptor -> read-only leased view, or FrameOverwritten."""
        if len(payload) <= DESC_HEAD.size:
            raise DecodeError("bad shared-memory descriptor")
        slot, seq = DESC_HEAD.unpack_from(payload)
        tail = payload[DESC_HEAD.size:]
        m, dtype, shape = self._kinds.get(tail) or self._kind(tail)
        if not (slot < m.slots and seq > 0):
            raise DecodeError(f"bad slot {slot} or sequence {seq} for segment {m.name}")
        return m.lease(slot, seq, dtype, shape)

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()
        self._kinds.clear()
