"""The in-process transport: between the nodes of one process group (`process:` in the graph).

A publish hands the Envelope to each in-process subscriber's `LocalQueue`: no msgpack, no
shared memory, no copy of array data. Everything else is as over NNG (iotrt.bus):

- latest-wins: a queue holds `queue` envelopes; a new one pushes out the oldest. As with NNG,
  the loss is seen and counted by the subscriber as a gap in `seq` (`drops`), with the same
  `msgs`/`drops`/`bad` counters and the same seq numbers as the output's NNG subscribers;
- `stamp_ns` and `trace` travel unchanged (each subscriber gets its own trace list);
- `data` is what decoding would give: dicts, lists (tuples become lists), str, bytes, int,
  float, bool, None, read-only arrays (and a msgpack Timestamp received and forwarded); numpy
  scalars become Python scalars; anything the wire cannot carry raises EncodeError at publish,
  exactly as over NNG. Containers are rebuilt per subscriber, so a consumer that changes its
  dict changes nobody else's.

The array contract (hand-over): publishing an array on an output with in-process subscribers
hands it over. An array that owns its memory is shared, not copied, and becomes read-only for
everyone, its producer included: a consumer cannot write to it, and a producer that tries to
reuse it for the next frame gets "ValueError: assignment destination is read-only" instead of
silently changing a frame a consumer still holds. Take a new array per message (`node.loan`,
or the new array most cv2/numpy calls return). An array that does not own its memory (a view,
e.g. `frame[10:20]`, or a shared-memory slot) is copied once, since its owner could still write
through the base; a read-only array over immutable bytes (a decoded one being forwarded) is
shared as it is.

Inputs are found through a process-wide registry keyed by the output's address, so publisher
and subscriber need not know about each other, nor start in any order.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections import deque
from typing import Any

from msgpack import Timestamp

from iotrt.codec import MAX_QUEUE, EncodeError, Envelope, wire_dtype

MAX_DEPTH = 512              # the nesting msgpack can carry; deeper is refused like the wire's
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1

_registry: dict[str, list[LocalQueue]] = {}
_registry_lock = threading.Lock()


def subscribers(address: str) -> list[LocalQueue]:
    """The in-process inputs fed by the output at `address` (a snapshot)."""
    with _registry_lock:
        return list(_registry.get(address, ()))


def deliver(env: Envelope, queues: list[LocalQueue]) -> None:
    """Hand `env` to every queue, each with its own containers (arrays shared, read-only)."""
    for q in queues:
        q.put(Envelope(env.topic, env.seq, env.stamp_ns, env.src, list(env.trace),
                       share(env.data)))


class LocalQueue:
    """One in-process input: a latest-wins queue of envelopes, readable through `fileno()`
    (an eventfd) by the node's selector, like an NNG Subscriber."""

    def __init__(self, address: str, *, queue: int = 2, name: str = ""):
        if not 1 <= queue <= MAX_QUEUE:
            raise ValueError(f"queue must be between 1 and {MAX_QUEUE} messages, not {queue}")
        self.address, self.name, self.queue = address, name or address, queue
        self.msgs = self.drops = self.bad = 0
        self._last_seq: int | None = None
        self._items: deque[Envelope] = deque(maxlen=queue)
        self._lock = threading.Lock()
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        with _registry_lock:
            _registry.setdefault(address, []).append(self)

    connected = True        # the publisher is in this process: nothing to connect

    def fileno(self) -> int:
        return self._fd

    def put(self, env: Envelope) -> None:
        """From the publishing node's thread: never blocks, the oldest waiting one goes."""
        with self._lock:
            if self._fd < 0:
                return
            self._items.append(env)
            os.eventfd_write(self._fd, 1)

    def recv_nowait(self) -> Envelope | None:
        with self._lock:
            if not self._items:
                self._clear()
                return None
            env = self._items.popleft()
            if not self._items:
                self._clear()
        return self._account(env)

    def recv(self, timeout_s: float | None = None) -> Envelope | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            env = self.recv_nowait()
            if env is not None:
                return env
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            select.select([self._fd], [], [], left)

    def _clear(self) -> None:
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass

    def _account(self, env: Envelope) -> Envelope:
        # the same bookkeeping as iotrt.bus.Subscriber: gaps in seq are drops; seq going
        # backwards means the publisher restarted
        last = self._last_seq
        if last is not None and env.seq > last + 1:
            self.drops += env.seq - last - 1
        self._last_seq = env.seq
        self.msgs += 1
        return env

    def stats(self) -> dict[str, int]:
        return {"msgs": self.msgs, "drops": self.drops, "bad": self.bad}

    def close(self) -> None:
        with _registry_lock:
            peers = _registry.get(self.address, [])
            if self in peers:
                peers.remove(self)
            if not peers:
                _registry.pop(self.address, None)
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._items.clear()

    def __enter__(self) -> LocalQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def share(data: Any, depth: int = 0) -> Any:
    """`data` as a subscriber gets it: see the module docstring."""
    if depth > MAX_DEPTH:
        raise EncodeError(f"data nested deeper than {MAX_DEPTH} levels")
    if data is None or isinstance(data, (str, bool, float, Timestamp)):   # immutable
        return data
    if isinstance(data, int):
        if not INT_MIN <= data <= INT_MAX:
            raise EncodeError(f"integer {data} does not fit in 64 bits")
        return data
    if isinstance(data, bytes):
        return bytes(data)
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise EncodeError(f"map keys must be str or int, not {type(k).__name__}")
            out[k] = share(v, depth + 1)
        return out
    if isinstance(data, (list, tuple)):
        return [share(v, depth + 1) for v in data]
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    np = sys.modules.get("numpy")       # no numpy loaded: no array can exist
    if np is not None:
        if isinstance(data, np.ndarray):
            return _hand_over(np, data)
        if isinstance(data, np.generic):
            return data.item()
    raise EncodeError(f"cannot send a {type(data).__name__}: not one of dict, list, tuple, str, "
                      f"bytes, int, float, bool, None, numpy array")


def _hand_over(np: Any, arr: Any) -> Any:
    wire_dtype(arr.dtype)               # the same dtypes as the wire, or EncodeError
    if arr.flags.owndata:
        arr.flags.writeable = False     # shared from now on: read-only for its producer too
        return arr
    base = arr
    while isinstance(base, np.ndarray) and not base.flags.owndata and base.base is not None:
        base = base.base
    if not arr.flags.writeable and isinstance(base, bytes):
        return arr                      # a read-only view on immutable bytes: safe to share
    if isinstance(base, np.ndarray) and not base.flags.writeable and not arr.flags.writeable:
        return arr                      # a read-only view of a handed-over array
    copy = arr.copy()
    copy.flags.writeable = False
    return copy
