"""The command channel's id store: which command ids a receiver has seen, and their acks.

See `IdStore`, and iotrt.command for the guarantee it serves.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from typing import Any

from iotrt.codec import DecodeError, pack, unpack

log = logging.getLogger("iotrt.command")

PENDING = "pending"
# Group commit: the syncer waits this long after the first unsynced write, so that the records
# written meanwhile share one fdatasync (and one wake-up of its thread) instead of one each.
GROUP_S = 0.005
_LEN = struct.Struct("<I")


class IdStore:
    """Command id -> ack (or PENDING), keeping the newest `capacity` ids, in one append-only
    file of records `[u32 length][msgpack [id, state]][u32 crc32 of the msgpack]`.

    `set` returns once the record is written (the kernel has it: it survives the death of
    this process). A syncer thread puts it on disk `GROUP_S` later with one fdatasync for
    everything written meanwhile (group commit), so no caller waits for the disk; `sync()`
    waits for it. Records with the id "" are the store's own: `{"boot": <kernel boot id>}` when
    a process opens it, `{"closed": True}` after a clean `close` (everything synced).

    A power loss can lose what was written but not yet synced. The next open sees it: the file
    was last opened under another boot and not closed (or a record is damaged). Then `fenced`
    is true: the server answers "outcome unknown" to a retry of an unknown id whose first
    attempt may have been sent before this store was opened (it may be one of the lost), and
    runs everything else. So the syncer decides only how much a power loss forgets (what it
    forgets is never run twice), and a few milliseconds of grouping cost nothing in safety.

    Loading never raises on a damaged file: a record whose checksum fails is skipped (the
    records after it are kept, found again by their checksums if its length is damaged too);
    a torn tail (power loss mid-write) is cut off. The file is rewritten with the newest
    `capacity` ids when it holds twice that many records.
    """

    def __init__(self, path: str | os.PathLike | None = None, capacity: int = 1024):
        self.path = os.fspath(path) if path is not None else None
        self.capacity = capacity
        self.skipped = 0  # damaged records skipped at load
        self.fenced = False
        self.opened_ns = time.monotonic_ns()
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._records = 0
        self._fd = -1
        self._cond = threading.Condition()
        self._written = self._synced = 0  # records written / known to be on disk
        self._idle = False  # the syncer waits for a write (set() must wake it)
        self._urgent = 0  # callers of sync() waiting: no group delay
        self._sync_error: OSError | None = None
        self._closing = False
        if self.path is None:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        new = not os.path.exists(self.path)
        self._boot = _boot_id()
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _write_all(self._fd, _record(pack(["", {"boot": self._boot}])))
        os.fdatasync(self._fd)
        if new:  # the file's directory entry must survive a power loss too
            _fsync_dir(directory)
        self._syncer = threading.Thread(target=self._sync_loop, daemon=True,
                                        name=f"idstore-sync {os.path.basename(self.path)}")
        self._syncer.start()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return
        boot, closed = None, True  # an empty file has nothing to lose
        pos = 0
        while pos < len(blob):
            rec = _record_at(blob, pos)
            if rec is None:
                nxt = _next_record(blob, pos + 1)
                if nxt == len(blob):
                    break  # nothing valid follows: a torn tail
                self.skipped += 1
                log.warning("%s: skipped %d damaged bytes at byte %d", self.path, nxt - pos,
                            pos)
                pos = nxt
                continue
            end, key, state = rec
            if key is None:
                self.skipped += 1
                log.warning("%s: skipped a damaged record at byte %d", self.path, pos)
            elif key == "":
                if isinstance(state, dict) and "boot" in state:
                    boot, closed = state["boot"], False
                elif state == {"closed": True}:
                    closed = True
            else:
                self.remember(key, state)
                closed = False
            self._records += 1
            pos = end
        if pos != len(blob):
            log.warning("%s: dropped a torn record at byte %d (power lost while writing)",
                        self.path, pos)
            closed = False
            with open(self.path, "r+b") as f:
                f.truncate(pos)
                os.fdatasync(f.fileno())
        # a damaged record, or a store left open by another boot: ids may be missing
        self.fenced = self.skipped > 0 or not closed and (boot is None or boot != self._boot)
        if self.fenced:
            log.warning("%s: damaged, or left open when the machine went down (power loss?): "
                        "the last commands before it may be missing; retries of unknown "
                        "commands first sent before now get 'outcome unknown'", self.path)

    def remember(self, key: str, state: Any) -> None:
        """Record `key` -> `state` in memory only."""
        self._items[key] = state
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, key: str) -> Any:
        return self._items.get(key)

    def set(self, key: str, state: Any) -> None:
        """Record `key` -> `state`; written (not yet synced) when this returns.
        Raises OSError (full disk, ...), and then `get` still gives the old state."""
        if self._fd >= 0:
            body = _record(pack([key, state]))
            with self._cond:
                _write_all(self._fd, body)
                self._written += 1
                self._records += 1
                if self._idle:
                    self._idle = False
                    self._cond.notify_all()
        self.remember(key, state)
        if self._records > 2 * self.capacity:
            self._compact()

    def sync(self, timeout_s: float | None = None) -> bool:
        """Wait until every record written so far is on disk; False on timeout.
        Raises the OSError of a failed fdatasync."""
        with self._cond:
            target = self._written
            self._urgent += 1
            self._cond.notify_all()
            try:
                done = self._cond.wait_for(
                    lambda: self._synced >= target or self._sync_error is not None, timeout_s)
            finally:
                self._urgent -= 1
            if self._sync_error is not None:
                raise self._sync_error
            return done

    def _sync_loop(self) -> None:
        while True:
            with self._cond:
                while not (self._written > self._synced or self._closing):
                    self._idle = True
                    self._cond.wait()
                self._idle = False
                if not self._urgent:  # let the next few ms of records share this sync
                    self._cond.wait_for(lambda: self._closing or self._urgent, GROUP_S)
                if self._closing:
                    return  # close() syncs
                target = self._written
                fd = os.dup(self._fd)  # compaction may swap self._fd while this one syncs
            try:
                os.fdatasync(fd)
            except OSError as exc:
                log.error("%s: fdatasync failed, command ids may not survive a power loss: "
                          "%s", self.path, exc)
                with self._cond:
                    self._sync_error = exc
                    self._cond.notify_all()
                return
            finally:
                os.close(fd)
            with self._cond:
                self._synced = max(self._synced, target)
                self._cond.notify_all()

    def _compact(self) -> None:
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, b"".join(_record(pack([k, s])) for k, s in
                                    [("", {"boot": self._boot}), *self._items.items()]))
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            raise
        with self._cond:
            os.replace(tmp, self.path)
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            os.close(self._fd)
            self._fd = fd
            self._synced = self._written  # all of it is in the new file, synced
            self._records = len(self._items) + 1

    def close(self) -> None:
        if self._fd < 0:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._syncer.join()
        _write_all(self._fd, _record(pack(["", {"closed": True}])))
        os.fdatasync(self._fd)  # everything, the acks written last included
        os.close(self._fd)
        self._fd = -1


def _boot_id() -> str | None:
    """The kernel's id of this boot (None where the kernel has none)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _record(body: bytes) -> bytes:
    return _LEN.pack(len(body)) + body + _LEN.pack(zlib.crc32(body))


def _record_at(blob: bytes, pos: int) -> tuple[int, str | None, Any] | None:
    """(end, id, state) of the record at `pos` if its checksum holds (id None if its content
    is not [id, state]), else None: no record starts there."""
    if pos + 2 * _LEN.size > len(blob):
        return None
    (n,) = _LEN.unpack_from(blob, pos)
    end = pos + n + 2 * _LEN.size
    if n == 0 or end > len(blob):
        return None
    body = memoryview(blob)[pos + _LEN.size:end - _LEN.size]
    if zlib.crc32(body) != _LEN.unpack_from(blob, end - _LEN.size)[0]:
        return None
    try:
        key, state = unpack(bytes(body))
    except (DecodeError, ValueError, TypeError):
        return end, None, None
    return (end, key, state) if isinstance(key, str) else (end, None, None)


def _next_record(blob: bytes, pos: int) -> int:
    """Where the next record whose checksum holds starts (len(blob) if none does)."""
    while pos < len(blob) and _record_at(blob, pos) is None:
        pos += 1
    return pos


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
