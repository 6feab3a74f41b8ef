"""The acknowledged command channel, for messages that must not be lost (actuator commands).

NNG Req0 (client, dials) / Rep0 (server, listens). A request is
`{"id", "src", "t_ns", "data"}`; the reply (the *ack*) is a map with at least `{"id", "ok"}`
and, by convention, `"result"` or `"error"`.

Delivery guarantee: each command id reaches the handler AT MOST ONCE, also across a restart of
the server process or a power loss, and every retry of a command the handler has acknowledged
gets the same ack back. The client retries with the same id until it gets an ack or runs out
of attempts. So, as long as the server comes back within the client's retry window, every
command is handled exactly once. The server keeps this promise with a persisted id store
(`iotrt.idstore.IdStore`: one append-only file, synced by a thread of its own, group commit):

1. before a command is handed to the handler its id is written as *pending*;
2. the handler's ack is written before it is sent back;
3. a retry of an acked id is answered from the store without running the handler again;
4. a retry of an id still *pending* (the process died between 1 and 2, so nobody knows whether
   the action happened) is answered `{"ok": False, "error": "outcome unknown ..."}` rather than
   running it twice. For a door lock that is the safe side;
5. after a power loss took records that were written but not yet synced, the store is
   *fenced*: a retry of an id it does not know, whose first attempt may predate the restart,
   is answered "outcome unknown" too (the client says how long ago its first attempt went).

A command whose pending record cannot be written (full disk, I/O error) is refused with the
reason and never handed to the handler. Without a `store_path` the store lives in memory
(duplicates are caught only while the process lives).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pynng

from iotrt import errors
from iotrt.bus import TlsConfig, check_address, recv_bytes, tls_for
from iotrt.codec import INT64_MAX, DecodeError, pack, unpack
from iotrt.idstore import PENDING, IdStore

log = logging.getLogger("iotrt.command")

DEFAULT_TIMEOUT_S = 1.0
DEFAULT_RETRIES = 4
# Ids are uuid hex (32 chars) in practice; a bound keeps a hostile sender from growing the id
# store (and the receiver's memory) with megabyte-sized ids.
MAX_ID_LEN = 128


# The most a request may take on the wire (the receiver's recv_max_size: NNG drops a larger one
# and its connection, unanswered). The sender refuses a command that would not fit, retries
# included: a retry adds `age_ns`, at most _RETRY_BYTES.
MAX_REQUEST_BYTES = 1 << 20
_RETRY_BYTES = 32


class CommandError(errors.TransportError, RuntimeError):
    """A command could not be delivered or acknowledged."""


class CommandTimeout(CommandError):
    """No ack arrived within the client's attempts."""


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
        payload = pack(full)  # an ack no message can carry raises here, and leaves it open
        server, self._server = self._server, None
        server._answer(self.id, full, payload)
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
        # Acks are sent without waiting: one the client's connection cannot take now is
        # dropped (its retry is answered from the id store), so a client that sends and never
        # reads cannot stall the actuator. No request is larger than MAX_REQUEST_BYTES.
        self._sock = pynng.Rep0(recv_max_size=MAX_REQUEST_BYTES)
        try:
            tls_cfg = tls_for(address, tls, server=True)
            if tls_cfg is not None:
                self._sock.tls_config = tls_cfg
            self._sock.listen(address)
        except BaseException:
            self._sock.close()
            self._store.close()
            raise
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
            self._persist(cid, state)
        elif state is None and self._store.fenced and self._sent_before_open(req):
            # its record may be among those a power loss took (see IdStore)
            state = {"id": cid, "ok": False,
                     "error": "outcome unknown: the receiver lost power around the time "
                              "this command was first sent; it was not run"}
            self._persist(cid, state)
        if state is not None:
            self.duplicates += 1
            self._send(state)
            return None
        try:
            self._store.set(cid, PENDING)
        except OSError as exc:
            # not recorded, not run: the client gets the reason (and may retry it later)
            log.error("%s: cannot persist command %s, refused: %s", self.name, cid, exc)
            self._send({"id": cid, "ok": False, "error": f"the receiver cannot persist "
                        f"the command id ({exc}); not run"})
            return None
        self.msgs += 1
        src = req.get("src") if isinstance(req.get("src"), str) else ""
        t_ns = req.get("t_ns") if type(req.get("t_ns")) is int else 0
        return Command(cid, src, req.get("data"), t_ns, self)

    def _sent_before_open(self, req: dict) -> bool:
        """Whether a request's first attempt may have been sent before the id store was
        opened. The client says how long before this attempt its first one went (`age_ns`)
        and how long this attempt can take to arrive (`wait_ns`: its send and receive
        timeouts; NNG re-sends a request whose connection broke within them): together, how
        far back the first attempt can lie. Durations, so the two hosts' clocks need not
        agree."""
        back = 0
        for key in ("age_ns", "wait_ns"):
            value = req.get(key)
            if type(value) is int and 0 <= value <= INT64_MAX:
                back += value
        return back >= time.monotonic_ns() - self._store.opened_ns

    def _answer(self, cid: str, ack: dict, payload: bytes) -> None:
        self._persist(cid, ack)
        self._send(ack, payload)

    def _persist(self, cid: str, state: Any) -> None:
        try:
            self._store.set(cid, state)
        except OSError as exc:
            # the ack goes out anyway; on disk the id stays pending, so a retry after a
            # restart gets "outcome unknown", never a second run
            log.error("%s: cannot persist the answer to %s: %s", self.name, cid, exc)
            self._store.remember(cid, state)

    def _send(self, ack: dict, payload: bytes | None = None) -> None:
        try:
            self._sock.send(pack(ack) if payload is None else payload, block=False)
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
        ms = max(1, int(timeout_s * 1000))
        t_first = time.monotonic_ns()
        # an attempt waits up to `ms` to be sent and `ms` for its ack: it reaches the receiver
        # (NNG re-sends it if its connection breaks meanwhile) at most 2 * ms after it is packed
        req = {"id": cid, "src": self.src, "t_ns": t_first, "data": data,
               "wait_ns": 2 * ms * 1_000_000}
        body = pack(req)
        if len(body) > MAX_REQUEST_BYTES - _RETRY_BYTES:   # the receiver would drop it unanswered
            raise CommandError(f"command {cid} to {self.address} is {len(body)} bytes: a command "
                               f"takes at most {MAX_REQUEST_BYTES - _RETRY_BYTES}")
        with self._lock:
            self._sock.send_timeout = ms
            self._sock.recv_timeout = ms
            for attempt in range(retries + 1):
                if attempt:  # how long ago the first attempt went (see IdStore.fenced)
                    req["age_ns"] = time.monotonic_ns() - t_first
                    body = pack(req)
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
