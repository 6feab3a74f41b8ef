"""NNG pub/sub endpoints: every node output is a Pub0 that listens, every input a Sub0 that dials.

Addresses: `ipc://` (default, one host), `tcp://` and `tls+tcp://` (across hosts). ipc socket
paths must fit the kernel's 107-byte limit, so the graph allocates short hashed names with
`short_ipc_address` under a runtime directory that only the service user can enter (0700,
on a path no other user can change: `iotrt.rundir`): nobody else on the machine can publish
into the graph.

Streams are latest-wins. A Subscriber's `queue` is its NNG receive buffer (in messages); when it
is full NNG keeps the newest and discards older ones, so a slow reader never slows the
publisher. NNG does not count those losses, so the Subscriber counts gaps in `seq` as `drops`.
Bytes that do not decode are counted as `bad`, logged (rate-limited) and skipped.

Large arrays published on an ipc output travel through shared memory (`iotrt.shm`); this is
transparent to both sides.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from _blake2 import blake2s  # hashlib's own blake2s; `import hashlib` loads OpenSSL (~3.5 MB)
from dataclasses import dataclass
from typing import Any

import pynng

from iotrt import errors, shm
from iotrt.codec import INT64_MAX, MAX_QUEUE, DecodeError, Decoder, EncodeError, Encoder, Envelope, FrameOverwritten
from iotrt.lazy import numpy as np  # imported when the first array travels
from iotrt.rundir import RuntimeDirError, ensure_runtime_dir  # noqa: F401 - re-exported

log = logging.getLogger("iotrt.bus")

IPC_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
SCHEMES = ("ipc://", "tcp://", "tls+tcp://")
DEFAULT_QUEUE = 2
# The largest message a subscriber takes (NNG drops the connection of a peer that sends more,
# counting and logging nothing, so Publisher.publish refuses a larger one): the camera's
# largest frame sent inline (no shared memory over TCP; 7680x4320 RGB) is 99.5 MB, and 128 MiB
# leaves room for its envelope (tests/runtime/test_bus.py ties the two). Decoding a message of
# small containers takes up to ~70x its size in memory: a bound on the size is the bound on that.
MAX_MESSAGE = 128 << 20


class AddressError(errors.TransportError, ValueError):
    """An endpoint address that cannot work (unknown scheme, ipc path too long, ...)."""


def short_ipc_address(runtime_dir: str | os.PathLike, graph: str, node: str, port: str) -> str:
    """A short, stable ipc address for one endpoint: ipc://<runtime_dir>/<10 hex chars>."""
    digest = blake2s(f"{graph}\0{node}\0{port}".encode(), digest_size=5).hexdigest()
    return f"ipc://{os.path.join(os.fspath(runtime_dir), digest)}"


def check_address(address: str) -> None:
    """Raise AddressError unless `address` can be used (called by the graph at load time)."""
    if not address.startswith(SCHEMES):
        raise AddressError(
            f"address {address!r} must start with one of {', '.join(SCHEMES)}"
        )
    if address.startswith("ipc://"):
        path = address[len("ipc://"):]
        n = len(path.encode())
        if n > IPC_PATH_MAX:
            raise AddressError(
                f"ipc socket path is {n} bytes, the limit is {IPC_PATH_MAX}: {path!r}; "
                f"use a shorter runtime_dir"
            )


def ipc_path(address: str) -> str | None:
    return address[len("ipc://"):] if address.startswith("ipc://") else None


def recv_bytes(sock: pynng.Socket, block: bool = True) -> bytes:
    """sock.recv(), except that an empty message comes back as b"" instead of crashing.

    pynng 0.9 raises RuntimeError ("cannot use unpack() on NULL") for a zero-length message,
    which any peer can send; every receive path in iotrt goes through here.
    """
    try:
        return sock.recv(block=block)
    except RuntimeError:
        return b""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS settings for `tls+tcp://` endpoints (files in PEM format).

    The publisher (listener) is the TLS server and needs `cert_key_file` (certificate followed
    by its private key); subscribers verify it against `ca_file`, checking `server_name`.
    `auth` is "required" (default: peers must present a certificate the CA signed),
    "optional" or "none".
    """

    ca_file: str | None = None
    cert_key_file: str | None = None
    server_name: str | None = None
    auth: str = "required"

    def build(self, server: bool) -> pynng.TLSConfig:
        modes = {
            "required": pynng.TLSConfig.AUTH_MODE_REQUIRED,
            "optional": pynng.TLSConfig.AUTH_MODE_OPTIONAL,
            "none": pynng.TLSConfig.AUTH_MODE_NONE,
        }
        if self.auth not in modes:
            raise AddressError(f"tls auth must be one of {', '.join(modes)}, not {self.auth!r}")
        if server and not self.cert_key_file:
            raise AddressError("a tls+tcp:// listener needs tls.cert_key_file")
        return pynng.TLSConfig(
            pynng.TLSConfig.MODE_SERVER if server else pynng.TLSConfig.MODE_CLIENT,
            server_name=None if server else self.server_name,
            ca_files=self.ca_file,
            cert_key_file=self.cert_key_file,
            auth_mode=modes[self.auth],
        )


def tls_for(address: str, tls: TlsConfig | None, server: bool) -> pynng.TLSConfig | None:
    if not address.startswith("tls+tcp://"):
        return None
    if tls is None:
        raise AddressError(f"{address} is a tls+tcp:// address but no tls settings were given")
    return tls.build(server)


class Publisher:
    """One node output: a Pub0 socket listening on `address`. Thread-safe `publish`.

    Arrays of at least `shm_threshold` bytes go through a shared-memory ring when the address
    is ipc (readers are on this host); None disables that. `queue` is the per-subscriber send
    buffer in messages (default: NNG's).
    """

    def __init__(
        self,
        address: str,
        topic: str,
        src: str,
        *,
        tls: TlsConfig | None = None,
        shm_threshold: int | None = shm.DEFAULT_THRESHOLD,
        shm_slots: int = shm.DEFAULT_SLOTS,
        queue: int | None = None,
    ):
        check_address(address)
        self.address, self.topic, self.src = address, topic, src
        self.seq = 0
        self.msgs = 0
        self._lock = threading.Lock()
        # queue: messages buffered per subscriber before the oldest are dropped (NNG's default
        # suits latest-wins streams; raise it with the subscriber's queue for bursty streams)
        self._sock = pynng.Pub0() if queue is None else pynng.Pub0(send_buffer_size=queue)
        tls_cfg = tls_for(address, tls, server=True)
        if tls_cfg is not None:
            self._sock.tls_config = tls_cfg
        try:
            self._sock.listen(address)
        except pynng.AddressInUse as exc:
            self._sock.close()
            raise AddressError(f"{address} is already in use by another publisher") from exc
        path = ipc_path(address)
        if path is not None:
            os.chmod(path, 0o600)
        self._ring = (
            shm.RingWriter(shm.segment_prefix(address), slots=shm_slots, threshold=shm_threshold)
            if path is not None and shm_threshold is not None
            else None
        )
        self._encoder = Encoder(self._ring.sink if self._ring is not None else None)

    def publish(self, data: Any, stamp_ns: int | None = None, trace: list | None = None) -> int:
        """Send `data`; returns its seq. stamp_ns defaults to now (a new sensor reading).

        Raises EncodeError for data the wire cannot carry, or a message over MAX_MESSAGE
        (every subscriber would drop it, and the connection with it, without a word)."""
        if stamp_ns is None:
            stamp_ns = time.monotonic_ns()
        with self._lock:
            seq = self.seq
            msg = self._encoder.encode_fields(
                self.topic, seq, stamp_ns, self.src, [] if trace is None else trace, data)
            if len(msg) > MAX_MESSAGE:
                raise EncodeError(
                    f"cannot publish on {self.topic!r}: the message is {len(msg):,} bytes, more "
                    f"than the bus takes ({MAX_MESSAGE:,} bytes, iotrt.bus.MAX_MESSAGE): every "
                    f"subscriber would drop it; send less (a smaller array, or several messages)")
            self._sock.send(msg)
            self.seq = seq + 1
            self.msgs += 1
            return seq

    def loan(self, shape: tuple, dtype: Any = "uint8") -> np.ndarray:
        """A writable array to fill and then publish without a copy (zero-copy frames).

        On an ipc output with shared memory the array lives in the next ring slot and
        `publish` sends only its descriptor; it is read-only after that. Elsewhere it is a
        plain array and publish copies it as usual. Take a new loan for every frame.
        """
        shape = tuple(shape)
        if self._ring is not None:
            with self._lock:
                frame = self._ring.loan(shape, dtype)  # None: small, or every slot leased
            if frame is not None:
                return frame
        return np.empty(shape, dtype)  # sent inline, with a copy

    @property
    def subscribers(self) -> int:
        """How many subscribers are connected right now."""
        return len(self._sock.pipes)

    def close(self) -> None:
        self._sock.close()
        if self._ring is not None:
            self._ring.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscriber:
    """One node input: a Sub0 socket dialing a publisher's `address`.

    `queue` is the number of messages buffered before the oldest are discarded (latest-wins).
    Counters: `msgs` received, `drops` lost (seq gaps, overwritten shared-memory frames),
    `bad` undecodable messages.
    """

    def __init__(
        self,
        address: str,
        *,
        queue: int = DEFAULT_QUEUE,
        tls: TlsConfig | None = None,
        name: str = "",
    ):
        check_address(address)
        if not 1 <= queue <= MAX_QUEUE:
            raise ValueError(f"queue must be between 1 and {MAX_QUEUE} messages, not {queue}")
        self.address, self.name, self.queue = address, name or address, queue
        self.msgs = self.drops = self.bad = 0
        self._last_seq: int | None = None
        self._timeout_ms: int | None = None
        # retry fast while the publisher is starting, back off to 1 s if it stays away (NNG
        # waits a random time below the bound; a 100 ms bound cost ~15x the CPU of 1 s for a
        # publisher that never comes, e.g. a bridge left unconfigured)
        self._sock = pynng.Sub0(recv_buffer_size=queue, reconnect_time_min=20,
                                reconnect_time_max=1000, recv_max_size=MAX_MESSAGE)
        tls_cfg = tls_for(address, tls, server=False)
        if tls_cfg is not None:
            self._sock.tls_config = tls_cfg
        self._sock.subscribe(b"")
        # non-blocking dial: NNG keeps retrying in the background until the publisher is up
        self._sock.dial(address, block=False)
        self._frames = shm.RingReaders() if address.startswith("ipc://") else None
        self._decoder = Decoder(self._frames.read if self._frames is not None else None)

    @property
    def connected(self) -> bool:
        """Whether the publisher is connected right now."""
        return bool(self._sock.pipes)

    def fileno(self) -> int:
        """A descriptor that is readable while a message is waiting (for selectors)."""
        return self._sock.recv_fd

    def recv(self, timeout_s: float | None = None) -> Envelope | None:
        """The next valid message, or None after `timeout_s` (None: wait forever)."""
        ms = -1 if timeout_s is None else max(0, int(timeout_s * 1000))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if ms != self._timeout_ms:
                self._sock.recv_timeout = ms
                self._timeout_ms = ms
            try:
                buf = self._sock.recv()
            except pynng.Timeout:
                return None
            except RuntimeError:  # an empty message (see recv_bytes)
                buf = b""
            env = self._accept(buf)
            if env is not None:
                return env
            if deadline is not None:  # a bad message: wait only for what is left
                ms = int((deadline - time.monotonic()) * 1000)
                if ms <= 0:
                    return self.recv_nowait()

    def recv_nowait(self) -> Envelope | None:
        """A waiting valid message, or None if there is none."""
        while True:
            try:
                buf = recv_bytes(self._sock, block=False)
            except pynng.TryAgain:
                return None
            env = self._accept(buf)
            if env is not None:
                return env

    def _accept(self, buf: bytes) -> Envelope | None:
        try:
            env = self._decoder.decode(buf)
        except FrameOverwritten:
            self.drops += 1
            return None
        except DecodeError as exc:
            self.bad += 1
            if self.bad == 1 or self.bad % 100 == 0:
                log.warning("%s: discarded undecodable message (%d so far): %s",
                            self.name, self.bad, exc)
            return None
        last = self._last_seq
        if last is not None and env.seq > last + 1:
            # saturating: a counter must stay packable in a heartbeat whatever the seqs were
            self.drops = min(self.drops + env.seq - last - 1, INT64_MAX)
        # seq going backwards means the publisher restarted: start counting afresh
        self._last_seq = env.seq
        self.msgs += 1
        return env

    def stats(self) -> dict[str, int]:
        return {"msgs": self.msgs, "drops": self.drops, "bad": self.bad}

    def close(self) -> None:
        self._sock.close()
        if self._frames is not None:
            self._frames.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
