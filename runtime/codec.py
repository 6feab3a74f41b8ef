"""The wire format: one envelope type, msgpack, one ExtType for numpy arrays. No pickle, ever.

Round-trip contract (what `decode(encode(env))` gives back):

- `data` may hold dict, list, tuple, str, bytes, int, float, bool, None and `numpy.ndarray`,
  nested freely. Tuples come back as lists. Map keys may be str or int. numpy scalars
  (`np.float32(1.5)`, `np.bool_(True)`) are sent as the equivalent Python scalar.
- Arrays: the dtypes in `ARRAY_DTYPES` (bool, signed/unsigned ints of 8-64 bits, float16/32/64,
  complex64/128), any shape including 0-d and empty. Big-endian arrays are sent little-endian;
  non-contiguous arrays are made contiguous. Any other dtype (object, str, structured,
  datetime, ...) is refused by `encode` with `EncodeError`: the receiver could not rebuild it
  without executing code.
- Decoded arrays are READ-ONLY views (``arr.flags.writeable is False``) on the received buffer
  (or, for shared-memory frames, on the leased ring slot, see iotrt.shm): call ``arr.copy()``
  to modify one. This is enforced, so a node cannot scribble on a buffer others still read.
- `decode` checks that the array header is well formed and that shape x itemsize equals the
  byte length; any malformed input raises `DecodeError` and only that, never executes code.

Arrays above a size threshold can travel out of band (shared memory, `iotrt.shm`): `encode`
takes an `array_sink` that may replace an array by an `EXT_SHM` descriptor, and `decode` an
`shm_reader` that turns the descriptor back into an array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack

from iotrt import errors
from iotrt.lazy import numpy as np  # imported when the first array is encoded or decoded

EXT_NDARRAY = 1
EXT_SHM = 2
WIRE_VERSION = 1
# Bounds on the envelope header, checked by decode (bytes from a socket are untrusted): seq and
# times are non-negative int64 (what a counter from 0 and time.monotonic_ns() produce), so any
# sum or count built on them stays packable; names are short; a trace has at most MAX_TRACE
# hops (encode keeps the newest ones, so a cycle in a graph cannot grow it without end).
INT64_MAX = 2**63 - 1
MAX_NAME = 256
MAX_TRACE = 128
# The most messages an input may queue: bus.Subscriber and local.LocalQueue refuse more, and a
# graph's `queue:` is checked against it at load.
MAX_QUEUE = 8192

# dtype.str on the wire -> dtype. Everything is little-endian on the wire.
class _WireDtypes(dict):
    """dtype.str -> dtype, filled (importing numpy) on first use."""

    NAMES = ("|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8",
             "<f2", "<f4", "<f8", "<c8", "<c16")

    def _fill(self) -> None:
        if not dict.__len__(self):
            self.update({n: np.dtype(n) for n in self.NAMES})

    def __getitem__(self, key):
        self._fill()
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        self._fill()
        return dict.get(self, key, default)

    def __contains__(self, key) -> bool:
        return key in self.NAMES

    def __iter__(self):
        return iter(self.NAMES)

    def __len__(self) -> int:
        return len(self.NAMES)


ARRAY_DTYPES: dict[str, np.dtype] = _WireDtypes()


class CodecError(errors.TransportError, ValueError):
    """Base class of the codec's errors."""


class EncodeError(CodecError):
    """`data` holds something the wire format cannot carry (see the module docstring)."""


class DecodeError(CodecError):
    """Bytes that are not a valid iotrt envelope (truncated, corrupted or foreign)."""


class FrameOverwritten(Exception):
    """A shared-memory frame was rewritten by its publisher before the reader copied it.

    Not a DecodeError: the message was valid, the reader was too late (counted as a drop)."""


@dataclass(slots=True)
class Envelope:
    topic: str  # "<node id>/<output name>"
    seq: int  # per-output counter from 0, +1 per publish; gaps = drops
    stamp_ns: int  # sensor capture time, time.monotonic_ns(); carried through the graph
    src: str  # id of the publishing node
    trace: list = field(default_factory=list)  # [[node id, t_ns], ...], one entry per hop
    data: Any = None


def wire_dtype(dtype: np.dtype) -> np.dtype:
    """The little-endian dtype an array of `dtype` is sent as; EncodeError if not allowed."""
    wire = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    if wire.str not in ARRAY_DTYPES:
        allowed = ", ".join(ARRAY_DTYPES[k].name for k in ARRAY_DTYPES)
        raise EncodeError(f"arrays of dtype {dtype} cannot be sent; allowed dtypes: {allowed}")
    return wire


def array_header(arr: np.ndarray) -> tuple[np.ndarray, bytes]:
    """(contiguous little-endian array, packed [dtype, shape] header) for the ext payloads."""
    wire = wire_dtype(arr.dtype)
    arr = np.asarray(arr, dtype=wire, order="C")  # (ascontiguousarray would make 0-d 1-d)
    return arr, msgpack.packb([wire.str, list(arr.shape)])


def parse_array_header(hdr: Any) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validate an unpacked [dtype, shape] header; returns (dtype, shape, byte size)."""
    if not (isinstance(hdr, list) and len(hdr) == 2 and isinstance(hdr[1], list)):
        raise DecodeError("array header is not [dtype, shape]")
    dtype = ARRAY_DTYPES.get(hdr[0]) if isinstance(hdr[0], str) else None
    if dtype is None:
        raise DecodeError(f"array dtype {hdr[0]!r} is not an allowed wire dtype")
    shape = hdr[1]
    if len(shape) > 32 or not all(type(n) is int and n >= 0 for n in shape):
        raise DecodeError(f"array shape {shape!r} is not a list of non-negative ints")
    count = 1
    for n in shape:
        count *= n
    return dtype, tuple(shape), count * dtype.itemsize


ArraySink = Callable[["np.ndarray"], "msgpack.ExtType | None"]
ShmReader = Callable[[bytes], "np.ndarray"]


class Encoder:
    """Encodes envelopes and maps, reusing one msgpack Packer (msgpack.packb builds a new one
    per call, a measurable share of a small message's cost). Not thread-safe: one per
    publisher, used under its lock. `array_sink` may divert large arrays (see iotrt.shm)."""

    def __init__(self, array_sink: ArraySink | None = None):
        self._sink = array_sink
        self._packer = msgpack.Packer(default=self._default, use_bin_type=True, datetime=False)

    def _default(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            if self._sink is not None:
                ext = self._sink(obj)
                if ext is not None:
                    return ext
            arr, hdr = array_header(obj)
            # header then raw bytes: decode slices the payload without another copy
            return msgpack.ExtType(EXT_NDARRAY, hdr + arr.tobytes())
        if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
            return obj.item()
        raise EncodeError(f"cannot send a {type(obj).__name__} ({obj!r:.60}) in a message")

    def pack(self, obj: Any) -> bytes:
        """Any contract-conforming object -> msgpack bytes. Raises EncodeError."""
        try:
            return self._packer.pack(obj)  # the Packer resets itself when this raises
        except EncodeError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot encode {type(obj).__name__}: {exc}") from exc

    def encode(self, env: Envelope) -> bytes:
        """Envelope -> bytes. Raises EncodeError if `env.data` breaks the contract."""
        return self.encode_fields(env.topic, env.seq, env.stamp_ns, env.src, env.trace, env.data)

    def encode_fields(self, topic: str, seq: int, stamp_ns: int, src: str, trace: list,
                      data: Any) -> bytes:
        """encode() without building an Envelope first (the publisher's hot path)."""
        if len(trace) > MAX_TRACE:
            trace = trace[-MAX_TRACE:]
        try:
            return self._packer.pack([WIRE_VERSION, topic, seq, stamp_ns, src, trace, data])
        except EncodeError as exc:
            raise EncodeError(f"cannot publish on {topic!r}: {exc}") from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot publish on {topic!r}: {exc}") from exc


def decode_array(payload: bytes) -> np.ndarray:
    """An EXT_NDARRAY payload -> read-only array viewing `payload`."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(payload))
    unpacker.feed(payload)
    hdr = unpacker.unpack()
    offset = unpacker.tell()
    dtype, shape, nbytes = parse_array_header(hdr)
    if nbytes != len(payload) - offset:
        raise DecodeError(
            f"array of shape {shape} and dtype {dtype} needs {nbytes} bytes, "
            f"the message carries {len(payload) - offset}"
        )
    arr = np.frombuffer(payload, dtype=dtype, offset=offset).reshape(shape)
    arr.flags.writeable = False  # payload is immutable bytes already; make it explicit
    return arr


class Decoder:
    """Decodes envelopes and maps; `shm_reader` resolves shared-memory frame descriptors.
    Thread-safe (it holds no parsing state). msgpack's own timestamp extension (type -1, which
    another language's publisher may send) arrives as a `msgpack.Timestamp`, and is sent on as
    one, over NNG and in-process alike."""

    def __init__(self, shm_reader: ShmReader | None = None):
        self._shm_reader = shm_reader

    def _ext_hook(self, code: int, payload: bytes) -> Any:
        if code == EXT_NDARRAY:
            return decode_array(payload)
        if code == EXT_SHM:
            if self._shm_reader is None:
                raise DecodeError(
                    "message refers to a shared-memory frame but this reader has no access "
                    "to shared memory (is the publisher on another host? use a tcp output "
                    "with shared memory off)"
                )
            return self._shm_reader(payload)
        raise DecodeError(f"unknown msgpack extension type {code}")

    def unpack(self, buf: bytes) -> Any:
        """msgpack bytes -> object. Raises DecodeError, and only that, for malformed input
        (or FrameOverwritten when a shared-memory frame is gone)."""
        try:
            return msgpack.unpackb(buf, raw=False, strict_map_key=False,
                                   ext_hook=self._ext_hook, use_list=True)
        except (DecodeError, FrameOverwritten):
            raise
        # msgpack's C parser signals hostile input with many exception types (ValueError,
        # TypeError, StackError, UnicodeDecodeError, ...); the contract promises one.
        except Exception as exc:
            raise DecodeError(f"not a valid message ({type(exc).__name__}: {exc})") from exc

    def decode(self, buf: bytes) -> Envelope:
        """bytes -> Envelope. Raises DecodeError, and only that, for any malformed input."""
        try:  # self.unpack, inline: this is every subscriber's hot path
            obj = msgpack.unpackb(buf, raw=False, strict_map_key=False,
                                  ext_hook=self._ext_hook)
        except (DecodeError, FrameOverwritten):
            raise
        except Exception as exc:  # see unpack
            raise DecodeError(f"not a valid message ({type(exc).__name__}: {exc})") from exc
        if not (type(obj) is list and len(obj) == 7 and obj[0] == WIRE_VERSION):
            raise DecodeError("not an iotrt envelope (or from an incompatible iotrt version)")
        _, topic, seq, stamp_ns, src, trace, data = obj
        if not (
            isinstance(topic, str) and isinstance(src, str) and isinstance(trace, list)
            and type(seq) is int and type(stamp_ns) is int
        ):
            raise DecodeError("envelope fields have the wrong types")
        if not (0 <= seq <= INT64_MAX and 0 <= stamp_ns <= INT64_MAX):
            raise DecodeError(f"envelope seq {seq} or stamp_ns {stamp_ns} outside 0..2^63-1")
        if len(topic) > MAX_NAME or len(src) > MAX_NAME or len(trace) > MAX_TRACE:
            raise DecodeError(f"envelope topic, src or trace too long (limits: {MAX_NAME} "
                              f"characters, {MAX_TRACE} hops)")
        for hop in trace:
            if not (isinstance(hop, list) and len(hop) == 2 and isinstance(hop[0], str)
                    and len(hop[0]) <= MAX_NAME and type(hop[1]) is int
                    and 0 <= hop[1] <= INT64_MAX):
                raise DecodeError(f"envelope trace entry {hop!r:.80} is not [node, t_ns]")
        return Envelope(topic, seq, stamp_ns, src, trace, data)


_DECODER = Decoder()


def pack(obj: Any) -> bytes:
    """Any contract-conforming object -> msgpack bytes (arrays inline). Thread-safe."""
    return Encoder().pack(obj)


def unpack(buf: bytes) -> Any:
    return _DECODER.unpack(buf)


def encode(env: Envelope, array_sink: ArraySink | None = None) -> bytes:
    return Encoder(array_sink).encode(env)


def decode(buf: bytes, shm_reader: ShmReader | None = None) -> Envelope:
    return (_DECODER if shm_reader is None else Decoder(shm_reader)).decode(buf)
