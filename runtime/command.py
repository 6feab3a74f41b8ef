"""The acknowledged command channel, for messages that must not be lost (actuator commands).

NNG Req0 (client, dials) / Rep0 (server, listens). A request is
`{"id", "src", "t_ns", "data"}`; the reply (the *ack*) is a map with at least `{"id", "ok"}`
and, by convention, `"result"` or `"error"`.

Delivery guarantee: each command id reaches the handler AT MOST ONCE, also across a restart of
the server process, and every retry of a command the handler has acknowledged gets the same
ack back. The client retries with the same id until it gets an ack or runs out of attempts.
So, as long as the server comes back within the client's retry window, every command is
handled exactly once. The server keeps this promise with a small persisted id store:

1. before a command is handed to the handler its id is written (and fsynced) as *pending*;
2. the handler's ack is written (and fsynced) before it is sent back;
3. a retry of an acked id is answered from the store without running the handler again;
4. a retry of an id still *pending* (the process died between 1 and 2, so nobody knows whether
   the action happened) is answered `{"ok": False, "error": "outcome unknown ..."}` rather than
   running it twice. For a door lock that is the safe side.

Without a `store_path` the store lives in memory (duplicates are caught only while the
process lives).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pynng

from iotrt.bus import TlsConfig, check_address, recv_bytes, tls_for
from iotrt.codec import DecodeError, pack, unpack

log = logging.getLogger("iotrt.command")

PENDING = "pending"
DEFAULT_TIMEOUT_S = 1.0
DEFAULT_RETRIES = 4
# Ids are uuid hex (32 chars) in practice; a bound keeps a hostile sender from growing the id
# store (and the receiver's memory) with megabyte-sized ids.
MAX_ID_LEN = 128
_LEN = struct.Struct("<I")


class CommandError(RuntimeError):
    """A command could not be delivered or acknowledged."""


class CommandTimeout(CommandError):
    """No ack arrived within the client's attempts."""


class IdStore:
    """Command id -> ack (or PENDING), keeping the newest `capacity` ids.

    Persisted as an append-only file of length-prefixed msgpack records [id, state], fsynced
    per write; compacted when it holds twice `capacity` records. A record torn by a crash
    mid-write is dropped at the next open (it was never acknowledged to anyone).
    """

    def __init__(self, path: str | os.PathLike | None = None, capacity: int = 1024):
        self.path = os.fspath(path) if path is not None else None
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._records = 0
        self._file = None
        if self.path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._load()
            self._file = open(self.path, "ab")

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return
        pos = 0
        while pos + _LEN.size <= len(blob):
            (n,) = _LEN.unpack_from(blob, pos)
            end = pos + _LEN.size + n
            if end > len(blob):
                break  # the last record was cut short by a crash
            try:
                key, state = unpack(blob[pos + _LEN.size:end])
                self._put(key, state)
            except (DecodeError, ValueError, TypeError):
                # a damaged record (not a torn tail): skip it, keep every other one
                log.warning("%s: skipped a damaged record at byte %d", self.path, pos)
            self._records += 1
            pos = end
        if pos != len(blob):
            log.warning("%s: dropped a torn record at byte %d (crash while writing)",
                        self.path, pos)
            with open(self.path, "r+b") as f:
                f.truncate(pos)

    def _put(self, key: str, state: Any) -> None:
        self._items[key] = state
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, key: str) -> Any:
        return self._items.get(key)

    def set(self, key: str, state: Any) -> None:
        self._put(key, state)
        if self._file is None:
            return
        body = pack([key, state])
        self._file.write(_LEN.pack(len(body)) + body)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._records += 1
        if self._records > 2 * self.capacity:
            self._compact()

    def _compact(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            for key, state in self._items.items():
                body = pack([key, state])
                f.write(_LEN.pack(len(body)) + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._file.close()
        self._file = open(self.path, "ab")
        self._records = len(self._items)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(slots=True)
class Command:
    """A command handed to the handler; answer it exactly once with `reply`."""

    id: str
    src: str
    data: Any
    t_ns: int
    _server: CommandServer | None = None

    @property
    def answered(self) -> bool:
        return self._server is None

    def reply(self, ack: dict | None = None) -> dict:
        """Acknowledge: `ack` is merged into {"id": ..., "ok": True}. Returns what was sent."""
        if self._server is None:
            raise CommandError(f"command {self.id} was already answered")
        full = {"id": self.id, "ok": True, **(ack or {})}
        server, self._server = self._server, None
        server._answer(self.id, full)
        return full


class CommandServer:
    """The receiving end (an actuator's command input): a Rep0 socket listening on `address`.

    `recv`/`recv_nowait` return the next *new* command; duplicates and malformed requests are
    answered internally. Reply to each command (`Command.reply`) before receiving the next:
    a Rep0 socket holds one request at a time.
    """

    def __init__(self, address: str, *, store_path: str | os.PathLike | None = None,
                 capacity: int = 1024, tls: TlsConfig | None = None, name: str = ""):
        check_address(address)
        self.address, self.name = address, name or address
        self.msgs = self.duplicates = self.bad = 0
        self._store = IdStore(store_path, capacity)
        self._sock = pynng.Rep0()
        tls_cfg = tls_for(address, tls, server=True)
        if tls_cfg is not None:
            self._sock.tls_config = tls_cfg
        self._sock.listen(address)
        if address.startswith("ipc://"):
            os.chmod(address[len("ipc://"):], 0o600)
        self._timeout_ms: int | None = None

    def fileno(self) -> int:
        return self._sock.recv_fd

    def recv(self, timeout_s: float | None = None) -> Command | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if ms != self._timeout_ms:
                self._sock.recv_timeout = ms
                self._timeout_ms = ms
            try:
                buf = recv_bytes(self._sock)
            except pynng.Timeout:
                return None
            cmd = self._accept(buf)
            if cmd is not None:
                return cmd

    def recv_nowait(self) -> Command | None:
        while True:
            try:
                buf = recv_bytes(self._sock, block=False)
            except pynng.TryAgain:
                return None
            cmd = self._accept(buf)
            if cmd is not None:
                return cmd

    def _accept(self, buf: bytes) -> Command | None:
        try:
            req = unpack(buf)
            if not (isinstance(req, dict) and isinstance(req.get("id"), str) and req["id"]):
                raise DecodeError("a command must be a map with a non-empty string id")
            if len(req["id"]) > MAX_ID_LEN:
                raise DecodeError(f"command id of {len(req['id'])} characters; the limit is "
                                  f"{MAX_ID_LEN}")
        except DecodeError as exc:
            self.bad += 1
            log.warning("%s: rejected a malformed command: %s", self.name, exc)
            self._send({"id": None, "ok": False, "error": f"malformed command: {exc}"})
            return None
        cid = req["id"]
        state = self._store.get(cid)
        if state == PENDING:
            # a previous incarnation died between delivering and acknowledging this id
            state = {"id": cid, "ok": False,
                     "error": "outcome unknown: the receiver restarted while handling "
                              "this command; it was not run again"}
            self._store.set(cid, state)
        if state is not None:
            self.duplicates += 1
            self._send(state)
            return None
        self._store.set(cid, PENDING)
        self.msgs += 1
        src = req.get("src") if isinstance(req.get("src"), str) else ""
        t_ns = req.get("t_ns") if type(req.get("t_ns")) is int else 0
        return Command(cid, src, req.get("data"), t_ns, self)

    def _answer(self, cid: str, ack: dict) -> None:
        self._store.set(cid, ack)
        self._send(ack)

    def _send(self, ack: dict) -> None:
        try:
            self._sock.send(pack(ack))
        except pynng.NNGException as exc:
            # the client gave up or went away; its retry will be answered from the store
            log.info("%s: could not send ack for %s: %s", self.name, ack.get("id"), exc)

    def close(self) -> None:
        self._sock.close()
        self._store.close()

    def __enter__(self) -> CommandServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CommandClient:
    """The sending end (a rule node's command output): a Req0 socket dialing `address`.

    Thread-safe: calls from several threads are serialised (one request in flight).
    """

    def __init__(self, address: str, *, src: str = "", tls: TlsConfig | None = None):
        check_address(address)
        self.address, self.src = address, src
        self._lock = threading.Lock()
        # NNG's own resend would duplicate our retries; we retry explicitly with the same id
        self._sock = pynng.Req0(resend_time=3_600_000, reconnect_time_min=20,
                                reconnect_time_max=1000)
        tls_cfg = tls_for(address, tls, server=False)
        if tls_cfg is not None:
            self._sock.tls_config = tls_cfg
        self._sock.dial(address, block=False)

    def call(self, data: Any, *, timeout_s: float = DEFAULT_TIMEOUT_S,
             retries: int = DEFAULT_RETRIES, id: str | None = None) -> dict:
        """Send a command and wait for its ack; retried `retries` times on timeout.

        Returns the ack map (check `ack["ok"]`); raises CommandTimeout if none arrived.
        """
        cid = id or uuid.uuid4().hex
        body = pack({"id": cid, "src": self.src, "t_ns": time.monotonic_ns(), "data": data})
        ms = max(1, int(timeout_s * 1000))
        with self._lock:
            self._sock.send_timeout = ms
            self._sock.recv_timeout = ms
            for attempt in range(retries + 1):
                try:
                    self._sock.send(body)
                    reply = unpack(recv_bytes(self._sock))
                except pynng.Timeout:
                    log.debug("command %s to %s: no ack (attempt %d)", cid, self.address,
                              attempt + 1)
                    continue
                except DecodeError as exc:
                    raise CommandError(f"malformed ack from {self.address}: {exc}") from exc
                if isinstance(reply, dict) and reply.get("id") == cid:
                    return reply
                if isinstance(reply, dict) and reply.get("id") is None:
                    raise CommandError(f"{self.address} rejected command {cid}: "
                                       f"{reply.get('error')}")
        raise CommandTimeout(
            f"no ack from {self.address} for command {cid} after {retries + 1} attempts "
            f"of {timeout_s:g} s (is the receiving node running?)"
        )

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> CommandClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
