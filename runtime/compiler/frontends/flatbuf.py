"""A minimal reader of FlatBuffers tables: just what the TFLite front end needs.

FlatBuffers layout (see the FlatBuffers "internals" documentation): the root is a uoffset at
byte 0; a table starts with a soffset to its vtable; the vtable lists, per field slot, the
field's offset from the table start (0 = absent, use the default). Vectors and strings are
reached through a uoffset and start with a uint32 length. Everything is little-endian.
Reading the TFLite schema through this keeps the front end free of generated code.
"""

from __future__ import annotations

import struct

import numpy as np

from iotrt import errors


class FlatBufferError(errors.ModelError, ValueError):
    """The bytes are not a well-formed FlatBuffer (truncated or corrupt file)."""


class Table:
    __slots__ = ("buf", "pos", "_vt", "_vt_len")

    def __init__(self, buf: bytes | memoryview, pos: int):
        self.buf = buf
        self.pos = pos
        self._vt = pos - self._i32(pos)
        self._vt_len = self._u16(self._vt)

    @classmethod
    def root(cls, buf: bytes) -> Table:
        if len(buf) < 8:
            raise FlatBufferError(f"file too short ({len(buf)} bytes)")
        return cls(buf, struct.unpack_from("<I", buf, 0)[0])

    def _check(self, pos: int, size: int) -> None:
        if pos < 0 or pos + size > len(self.buf):
            raise FlatBufferError(f"offset {pos} out of range (file truncated or corrupt)")

    def _u16(self, pos: int) -> int:
        self._check(pos, 2)
        return struct.unpack_from("<H", self.buf, pos)[0]

    def _i32(self, pos: int) -> int:
        self._check(pos, 4)
        return struct.unpack_from("<i", self.buf, pos)[0]

    def _u32(self, pos: int) -> int:
        self._check(pos, 4)
        return struct.unpack_from("<I", self.buf, pos)[0]

    def _field(self, slot: int) -> int:
        """Absolute position of field `slot`, or 0 when the field is absent."""
        entry = 4 + 2 * slot
        if entry >= self._vt_len:
            return 0
        off = self._u16(self._vt + entry)
        return self.pos + off if off else 0

    def scalar(self, slot: int, fmt: str, default=0):
        p = self._field(slot)
        if not p:
            return default
        self._check(p, struct.calcsize(fmt))
        return struct.unpack_from("<" + fmt, self.buf, p)[0]

    def table(self, slot: int) -> Table | None:
        p = self._field(slot)
        return Table(self.buf, p + self._u32(p)) if p else None

    def _vector(self, slot: int) -> tuple[int, int] | None:
        p = self._field(slot)
        if not p:
            return None
        start = p + self._u32(p)
        return start + 4, self._u32(start)

    def string(self, slot: int, default: str = "") -> str:
        v = self._vector(slot)
        if v is None:
            return default
        start, n = v
        self._check(start, n)
        return bytes(self.buf[start : start + n]).decode("utf-8", errors="replace")

    def array(self, slot: int, dtype: str) -> np.ndarray | None:
        """A vector of scalars as a numpy array (a view of the buffer, read-only)."""
        v = self._vector(slot)
        if v is None:
            return None
        start, n = v
        dt = np.dtype(dtype).newbyteorder("<")
        self._check(start, n * dt.itemsize)
        return np.frombuffer(self.buf, dtype=dt, count=n, offset=start)

    def tables(self, slot: int) -> list[Table]:
        v = self._vector(slot)
        if v is None:
            return []
        start, n = v
        return [Table(self.buf, start + 4 * i + self._u32(start + 4 * i)) for i in range(n)]
