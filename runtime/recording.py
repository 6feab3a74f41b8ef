"""Recordings: envelopes in MCAP files (the `mcap` library), written and read back.

The container is MCAP, untouched: any MCAP reader (the `mcap` CLI, Foxglove, the `mcap`
Python package) lists the topics and reads the messages. What iotrt puts in it:

- the header's profile is "iotrt"; a metadata record "iotrt" written first says the recording
  format (`format`, this module reads FORMAT and older), the iotrt version, the graph, and a
  clock pair (`mono_ns`, `wall_ns` read together) that maps envelope stamps to wall time;
- one channel per topic, message encoding "msgpack", with a JSON-schema record per topic that
  describes the encoding. Each message is the msgpack map {seq, stamp_ns, src, trace, data}
  (the topic is the channel's). `data` uses iotrt's codec (ndarrays as ExtType 1,
  see iotrt.codec) or, on a channel whose metadata says `iotrt.data: jpeg`, is the JPEG bytes
  of an RGB frame (H, W, 3 uint8);
- MCAP's log_time is when the recorder received the message (monotonic ns), publish_time the
  envelope's stamp_ns, sequence its seq;
- a metadata record "iotrt.stats" written last gives the recorder's drops per topic.

Writing flushes a chunk at least every `flush_s`, so a recorder killed with SIGKILL leaves a
file whose flushed messages are readable (it lacks the summary and footer: `read` reports it
as truncated and `Recording(..., partial=True)` reads it anyway).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
from mcap.exceptions import McapError
from mcap.records import Channel, Chunk, DataEnd, Footer, Header, Message, Metadata
from mcap.stream_reader import CRCValidationError, StreamReader, breakup_chunk
from mcap.writer import CompressionType, Writer

from iotrt import __version__, errors
from iotrt.codec import CodecError, Encoder, Envelope, unpack

FORMAT = 1
PROFILE = "iotrt"
MESSAGE_ENCODING = "msgpack"
FRAME_ENCODINGS = ("jpeg", "raw")
# A single record larger than this is refused when reading (untrusted files): a raw 4K frame
# is 25 MB, a chunk holds one message or ~1 MB of them.
RECORD_LIMIT = 256 << 20
CHUNK_BYTES = 1 << 20
# The largest message payload written: its chunk (up to CHUNK_BYTES of earlier messages, then
# this one, then record headers) must stay within RECORD_LIMIT, or the reader refuses the chunk
# and everything after it (a raw 1 GiB array from shared memory made such a file).
MAX_PAYLOAD = RECORD_LIMIT - CHUNK_BYTES - (64 << 10)
# A recorded JPEG frame of more pixels than this is not written, and not decoded when read
# (it is skipped, counted and logged): its header is 1 KB whatever size it claims, its pixels
# would not be (8192x8192 RGB is 200 MB). Pixels, not sides: a 9000x64 panorama strip is small.
MAX_FRAME_PIXELS = 8192 * 8192
MAX_TRACE = 1024          # hops kept in a recorded trace (the bus keeps 128)

_ENVELOPE_SCHEMA = {
    "title": "iotrt envelope",
    "description": "msgpack map; data: msgpack with numpy arrays as ExtType 1 "
                   "[dtype str, shape list, little-endian C-order bytes] (iotrt.codec)",
    "type": "object",
    "properties": {"seq": {"type": "integer"}, "stamp_ns": {"type": "integer"},
                   "src": {"type": "string"}, "trace": {"type": "array"}, "data": {}},
}
log = logging.getLogger("iotrt.recording")

_JPEG_SCHEMA = dict(_ENVELOPE_SCHEMA, title="iotrt JPEG frame",
                    description="msgpack map; data: JPEG bytes of an RGB uint8 (H, W, 3) frame")


class RecordingError(errors.StorageError):
    """A recording that cannot be written or read; str() is one line a user can act on."""


class NotRecordable(RecordingError, ValueError):
    """One message whose data the recording's encoding (iotrt.codec) refuses: skip it, the
    recording goes on."""


class FrameTooLarge(RecordingError):
    """A recorded frame whose header claims more than MAX_FRAME_PIXELS: that one message is
    skipped when reading (counted in TopicInfo.skipped), the rest of the recording is read."""


class NotARecording(RecordingError):
    """Not an MCAP file, or an MCAP file iotrt did not write."""


class NewerRecording(RecordingError):
    """Written by a newer iotrt, in a recording format this one does not know."""


class TruncatedRecording(RecordingError):
    """The file ends before its footer (the recorder was killed or the disk filled up)."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """One recorded message: the envelope's fields and when the recorder got it."""

    topic: str
    seq: int
    stamp_ns: int
    src: str
    trace: list
    data: Any
    log_time_ns: int

    def envelope(self) -> Envelope:
        return Envelope(self.topic, self.seq, self.stamp_ns, self.src, list(self.trace), self.data)


def is_frame(data: Any) -> bool:
    """An RGB frame as cameras publish it: uint8 (H, W, 3)."""
    return (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 3
            and data.shape[2] == 3 and data.size > 0)


# --- writing ---------------------------------------------------------------------------------

class RecordWriter:
    """Writes envelopes to one MCAP file. Not thread-safe: one recorder loop owns it.

    frames: "jpeg" (quality 1-100) or "raw". `meta` goes into the "iotrt" metadata record
    (its keys win over the ones this writer puts there). The file is created 0600.
    """

    def __init__(self, path: str | os.PathLike, *, frames: str = "jpeg", quality: int = 80,
                 meta: dict[str, str] | None = None, flush_s: float = 1.0) -> None:
        if frames not in FRAME_ENCODINGS:
            raise ValueError(f"frames must be one of {FRAME_ENCODINGS}, not {frames!r}")
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be 1..100, not {quality}")
        self.path = Path(path)
        self.frames, self.quality, self.flush_s = frames, quality, flush_s
        try:   # private (0600), like the journal: recordings hold what the camera saw
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            self._file: BinaryIO = os.fdopen(fd, "wb")
        except OSError as exc:
            raise RecordingError(f"cannot write {self.path}: {exc.strerror}") from exc
        self._mcap = Writer(self._file, chunk_size=CHUNK_BYTES, compression=CompressionType.NONE)
        self._mcap.start(profile=PROFILE, library=f"iotrt {__version__}")
        mono, wall = time.monotonic_ns(), time.time_ns()
        head = {"format": str(FORMAT), "iotrt": __version__, "mono_ns": str(mono),
                "wall_ns": str(wall), "frames": frames, "quality": str(quality)}
        self._mcap.add_metadata(PROFILE, {**head, **(meta or {})})
        self._channels: dict[tuple[str, str], int] = {}
        self._encoder = Encoder()
        self.counts: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.messages = 0
        self._last_flush = time.monotonic()
        self._file.flush()

    @property
    def bytes(self) -> int:
        """Bytes in the file so far (flushed chunks; the open chunk is not counted)."""
        return self._size if self._file.closed else self._file.tell()

    def _channel(self, topic: str, kind: str) -> int:
        key = (topic, kind)
        cid = self._channels.get(key)
        if cid is None:
            schema = _JPEG_SCHEMA if kind == "jpeg" else _ENVELOPE_SCHEMA
            sid = self._mcap.register_schema(
                name=f"iotrt/{'JpegFrame' if kind == 'jpeg' else 'Envelope'}",
                encoding="jsonschema", data=json.dumps(schema).encode())
            cid = self._channels[key] = self._mcap.register_channel(
                topic=topic, message_encoding=MESSAGE_ENCODING, schema_id=sid,
                metadata={"iotrt.data": kind})
        return cid

    def encode(self, env: Envelope) -> tuple[str, bytes]:
        return encode(env, self.frames, self.quality, self._encoder)

    def write(self, env: Envelope, log_time_ns: int | None = None) -> None:
        """Append one envelope (NotRecordable for data the codec refuses)."""
        kind, payload = self.encode(env)
        self.write_encoded(env.topic, kind, payload, env.seq, env.stamp_ns, log_time_ns)

    def write_encoded(self, topic: str, kind: str, payload: bytes, seq: int, stamp_ns: int,
                      log_time_ns: int | None = None) -> None:
        """Append a message `encode` made earlier (e.g. kept in a clip's pre-event ring)."""
        log_time = time.monotonic_ns() if log_time_ns is None else log_time_ns
        self._mcap.add_message(self._channel(topic, kind), log_time=log_time, data=payload,
                               publish_time=stamp_ns, sequence=seq & 0xFFFFFFFF)
        self.counts[topic] += 1
        self.messages += 1
        self.flush_if_due()

    def flush_if_due(self) -> None:
        """Flush when the last flush is `flush_s` old (call it when idle, too)."""
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write out the open chunk (its messages then survive a SIGKILL)."""
        self._mcap.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Write the drops, the summary and the footer: an indexed, complete file."""
        if self._file.closed:
            return
        self._mcap.flush()
        self._mcap.add_metadata("iotrt.stats", {
            "drops": json.dumps(dict(self.drops)), "counts": json.dumps(dict(self.counts)),
            "end_wall_ns": str(time.time_ns())})
        self._mcap.finish()
        self._size = self._file.tell()
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode(env: Envelope, frames: str = "jpeg", quality: int = 80,
           encoder: Encoder | None = None) -> tuple[str, bytes]:
    """(kind, payload) of one envelope as a recording stores it: kind "jpeg" for a frame
    stored as JPEG, else "msgpack". NotRecordable for data the codec refuses. Pass a reused
    `encoder` when encoding many: a fresh msgpack Packer per large frame (iotrt.codec.pack)
    took a recorder of raw frames to 240 MB of RSS here, a reused one stays at ~40 MB."""
    data, kind = env.data, "msgpack"
    what = f"message {env.seq} on {env.topic}"
    if frames == "jpeg" and is_frame(data):
        h, w = data.shape[:2]
        if h * w > MAX_FRAME_PIXELS:     # what a reader would refuse is not written
            raise NotRecordable(f"{what}: a {w}x{h} frame has more pixels than a recording "
                                f"holds ({MAX_FRAME_PIXELS:,}, 8192x8192)")
        data, kind = _jpeg(data, quality, what), "jpeg"
    try:
        payload = (encoder or Encoder()).pack({
            "seq": env.seq, "stamp_ns": env.stamp_ns, "src": env.src, "trace": env.trace,
            "data": data})
    except CodecError as exc:
        raise NotRecordable(f"{what}: {exc}") from exc
    if len(payload) > MAX_PAYLOAD:
        raise NotRecordable(f"{what}: {len(payload):,} bytes, more than a recording holds in "
                            f"one message ({MAX_PAYLOAD:,})")
    return kind, payload


def _jpeg(frame: np.ndarray, quality: int, what: str) -> bytes:
    """The frame as JPEG; NotRecordable for one the encoder refuses (a side over 65,500)."""
    import cv2  # only where frames are compressed: a recorder of small messages needs no cv2

    try:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
    except cv2.error as exc:
        raise NotRecordable(f"{what}: cannot JPEG-encode a frame of shape {frame.shape}: "
                            f"{(str(exc).strip().splitlines() or ['OpenCV error'])[-1]}") from exc
    if not ok:
        raise NotRecordable(f"{what}: cannot JPEG-encode a frame of shape {frame.shape}")
    return buf.tobytes()


# --- reading ---------------------------------------------------------------------------------

@dataclass
class TopicInfo:
    topic: str
    encoding: str               # "msgpack" or "jpeg"
    count: int = 0
    drops: int = 0
    skipped: int = 0            # frames over MAX_FRAME_PIXELS, not decoded (read so far)
    first_ns: int | None = None  # log times
    last_ns: int | None = None

    @property
    def frames(self) -> bool:
        return self.encoding == "jpeg"


@dataclass
class Info:
    """What `iotrt record info` shows."""

    path: Path
    size: int
    meta: dict[str, str]
    topics: dict[str, TopicInfo] = field(default_factory=dict)
    complete: bool = False
    error: str = ""              # why the file ends early (complete False)

    @property
    def messages(self) -> int:
        return sum(t.count for t in self.topics.values())

    @property
    def start_ns(self) -> int | None:
        starts = [t.first_ns for t in self.topics.values() if t.first_ns is not None]
        return min(starts) if starts else None

    @property
    def end_ns(self) -> int | None:
        ends = [t.last_ns for t in self.topics.values() if t.last_ns is not None]
        return max(ends) if ends else None

    @property
    def duration_s(self) -> float:
        if self.start_ns is None or self.end_ns is None:
            return 0.0
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def drops(self) -> int:
        return sum(t.drops for t in self.topics.values())

    @property
    def skipped(self) -> int:
        return sum(t.skipped for t in self.topics.values())

    def wall_ns(self, mono_ns: int) -> int | None:
        """The wall-clock time of a monotonic stamp taken on the recording host."""
        try:
            return int(self.meta["wall_ns"]) + mono_ns - int(self.meta["mono_ns"])
        except (KeyError, ValueError):
            return None


class Recording:
    """Reads an iotrt MCAP file: `Recording(path).info()`, `.messages(topics)`.

    Every read checks the file: NotARecording, NewerRecording, TruncatedRecording (unless
    `partial`: then a truncated file reads up to its last complete chunk), RecordingError
    for corrupted content. Messages whose data cannot be decoded raise RecordingError too;
    a frame over MAX_FRAME_PIXELS is well-formed but not decoded: that message is skipped,
    counted in its TopicInfo.skipped and logged, and the read goes on.
    """

    def __init__(self, path: str | os.PathLike, *, partial: bool = False) -> None:
        self.path = Path(path)
        self.partial = partial

    def _records(self, info: Info) -> Iterator[Any]:
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot read: {exc.strerror}") from exc
        with f:
            # Chunks come whole so that a compressed one is refused before it is inflated:
            # RECORD_LIMIT bounds a record as stored, not what it decompresses to.
            reader = StreamReader(f, record_size_limit=RECORD_LIMIT, validate_crcs=True,
                                  emit_chunks=True)
            records = reader.records
            try:
                first = next(records)
            except (McapError, struct.error, ValueError, EOFError) as exc:
                raise NotARecording(f"{self.path}: not an MCAP file ({_why(exc)})") from None
            except StopIteration:
                raise NotARecording(f"{self.path}: not an MCAP file (empty)") from None
            if not isinstance(first, Header) or first.profile != PROFILE:
                profile = getattr(first, "profile", "?")
                raise NotARecording(f"{self.path}: an MCAP file, but not an iotrt recording "
                                    f"(profile {profile!r})")
            try:
                for record in records:
                    if isinstance(record, (DataEnd, Footer)):
                        info.complete = True
                        return
                    if isinstance(record, Chunk):
                        if record.compression:
                            raise RecordingError(
                                f"{self.path}: a {record.compression}-compressed chunk before "
                                f"byte {f.tell()}: iotrt reads the uncompressed chunks it writes "
                                f"and does not inflate untrusted ones (rewrite the file "
                                f"uncompressed)")
                        yield from breakup_chunk(record, validate_crc=True)
                    else:
                        yield record
            except CRCValidationError as exc:
                raise RecordingError(f"{self.path}: corrupted ({exc})") from None
            except (McapError, struct.error, ValueError, EOFError, UnicodeDecodeError) as exc:
                info.error = f"the file ends early or is damaged at byte {f.tell()} ({_why(exc)})"
            else:
                info.error = "the file ends without a footer"
        if not self.partial:
            raise TruncatedRecording(
                f"{self.path}: truncated: {info.error} (was the recorder killed?); "
                f"the {info.messages} message(s) before that are readable with --partial")

    def _scan(self, topics: set[str] | None, decode: bool, info: Info,
              frames: bool = True) -> Iterator[Recorded]:
        channels: dict[int, tuple[str, str]] = {}
        for record in self._records(info):
            if isinstance(record, Metadata):
                if record.name == PROFILE:
                    _check_format(self.path, record.metadata)
                    info.meta = dict(record.metadata)
                elif record.name == "iotrt.stats":
                    for topic, n in _json_map(record.metadata.get("drops")).items():
                        if topic in info.topics and isinstance(n, int):
                            info.topics[topic].drops = n
            elif isinstance(record, Channel):
                kind = record.metadata.get("iotrt.data", "")
                if record.message_encoding != MESSAGE_ENCODING or kind not in ("msgpack", "jpeg"):
                    raise NotARecording(
                        f"{self.path}: channel {record.topic!r} has encoding "
                        f"{record.message_encoding!r}/{kind!r}, which iotrt does not write")
                channels[record.id] = (record.topic, kind)
                info.topics.setdefault(record.topic, TopicInfo(record.topic, kind))
            elif isinstance(record, Message):
                if not info.meta:
                    raise NotARecording(f"{self.path}: no 'iotrt' metadata before the messages")
                if record.channel_id not in channels:
                    raise RecordingError(f"{self.path}: a message on unknown channel "
                                         f"{record.channel_id}")
                topic, kind = channels[record.channel_id]
                t = info.topics[topic]
                t.count += 1
                t.first_ns = record.log_time if t.first_ns is None else t.first_ns
                t.last_ns = record.log_time
                if decode and (topics is None or topic in topics):
                    try:
                        recorded = _decode(self.path, topic, kind, record, frames)
                    except FrameTooLarge as exc:
                        t.skipped += 1
                        if t.skipped in (1, 10, 100) or t.skipped % 1000 == 0:
                            log.warning("%s (skipped; %d frame(s) of %s skipped so far)",
                                        exc, t.skipped, topic)
                        continue
                    yield recorded

    def info(self) -> Info:
        """Scan the whole file: topics, counts, times, drops (raises like `messages`)."""
        info = Info(self.path, self.path.stat().st_size if self.path.exists() else 0, {})
        for _ in self._scan(None, False, info):
            pass
        return info

    def check(self) -> Info:
        """`info()`, and every message's envelope checked (JPEG frames are not decoded): what
        a replay does before it starts anything."""
        info = Info(self.path, self.path.stat().st_size if self.path.exists() else 0, {})
        for _ in self._scan(None, True, info, frames=False):
            pass
        return info

    def messages(self, topics: set[str] | None = None, info: Info | None = None
                 ) -> Iterator[Recorded]:
        """The messages (of `topics`, default all) in file order, decoded."""
        info = info if info is not None else Info(self.path, 0, {})
        return self._scan(topics, True, info)


def _decode(path: Path, topic: str, kind: str, record: Message, frames: bool) -> Recorded:
    try:
        m = unpack(record.data)
    except CodecError as exc:
        raise RecordingError(f"{path}: message {record.sequence} on {topic}: {exc}") from None
    if not (isinstance(m, dict) and {"seq", "stamp_ns", "src", "trace", "data"} <= set(m)
            and all(_is_int63(m[k]) for k in ("seq", "stamp_ns")) and isinstance(m["src"], str)
            and isinstance(m["trace"], list) and len(m["trace"]) <= MAX_TRACE):
        raise RecordingError(f"{path}: message {record.sequence} on {topic} is not an envelope "
                             f"(seq, stamp_ns: integers 0..2^63-1; src: text; trace: a list)")
    data = m["data"]
    if kind == "jpeg":
        if not isinstance(data, bytes):
            raise RecordingError(f"{path}: a frame on {topic} is not a readable JPEG")
        size = _jpeg_size(data)   # its header, read without decoding (check() decodes none)
        if size is not None and size[0] * size[1] > MAX_FRAME_PIXELS:
            raise FrameTooLarge(f"{path}: message {m['seq']} on {topic}: a frame of "
                                f"{size[1]}x{size[0]} pixels, more than {MAX_FRAME_PIXELS:,} "
                                f"(8192x8192): not decoded")
        if frames:
            data = _unjpeg(path, topic, data, size)
    return Recorded(topic, m["seq"], m["stamp_ns"], m["src"], m["trace"], data, record.log_time)


def _is_int63(value: Any) -> bool:
    return type(value) is int and 0 <= value < 1 << 63


def _unjpeg(path: Path, topic: str, data: bytes, size: tuple[int, int] | None) -> np.ndarray:
    """A JPEG whose header size `_decode` has checked, decoded to RGB."""
    import cv2

    img = None if size is None else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise RecordingError(f"{path}: a frame on {topic} is not a readable JPEG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame header, read without decoding; None if
    `data` has no such header before its scan."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                      # fill byte before a marker
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:    # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):              # end of image, start of scan: no frame header
            return None
        (length,) = struct.unpack_from(">H", data, i + 2)
        if marker in _SOF:
            if i + 9 > len(data):
                return None
            return struct.unpack_from(">HH", data, i + 5)
        i += 2 + length
    return None


def _check_format(path: Path, meta: dict[str, str]) -> None:
    try:
        version = int(meta.get("format", ""))
    except ValueError:
        raise NotARecording(f"{path}: bad recording format {meta.get('format')!r}") from None
    if version > FORMAT:
        raise NewerRecording(
            f"{path}: recording format {version} was written by a newer iotrt "
            f"({meta.get('iotrt', '?')}); this iotrt ({__version__}) reads format {FORMAT}: "
            f"upgrade iotrt")


def _json_map(text: str | None) -> dict:
    """A JSON object from a metadata value, {} if it is not one: a damaged stats record loses
    the drop counts, not the recording (RecursionError: nested deeper than json can parse)."""
    try:
        value = json.loads(text or "{}")
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:120]
