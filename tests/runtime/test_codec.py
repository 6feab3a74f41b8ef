"""The codec's round-trip contract, including property tests against hostile bytes."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from iotrt.codec import ARRAY_DTYPES, EXT_NDARRAY, DecodeError, EncodeError, Envelope, decode, encode


def roundtrip(data):
    return decode(encode(Envelope("a/b", 3, 7, "a", [["a", 1]], data)))


def test_envelope_fields_roundtrip():
    env = roundtrip({"k": [1, 2.5, "s", b"\x00", None, True]})
    assert (env.topic, env.seq, env.stamp_ns, env.src, env.trace) == ("a/b", 3, 7, "a", [["a", 1]])
    assert env.data == {"k": [1, 2.5, "s", b"\x00", None, True]}


def test_tuples_become_lists_and_numpy_scalars_become_python():
    data = roundtrip({"t": (1, (2, 3)), "f": np.float32(1.5), "b": np.bool_(True), 4: "int key"})
    assert data.data == {"t": [1, [2, 3]], "f": 1.5, "b": True, 4: "int key"}
    assert type(data.data["f"]) is float and type(data.data["b"]) is bool


def test_decoded_arrays_are_read_only():
    arr = roundtrip(np.arange(5)).data
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0] = 1


def test_non_contiguous_and_big_endian_arrays():
    a = np.arange(24, dtype=">f8").reshape(4, 6)[:, ::2]
    b = roundtrip(a).data
    assert b.dtype == np.dtype("<f8") and np.array_equal(a, b)


@pytest.mark.parametrize("bad", [
    np.array(["a", "b"]), np.array([object()]), np.zeros(2, dtype="M8[s]"),
    np.zeros(2, dtype=[("x", "<i4")]), {1, 2}, object(),
])
def test_unlisted_types_are_refused_on_encode(bad):
    with pytest.raises(EncodeError):
        encode(Envelope("a/b", 0, 0, "a", [], {"x": bad}))


def _ext(dtype: str, shape: list, payload: bytes) -> bytes:
    body = msgpack.packb([dtype, shape]) + payload
    return msgpack.packb([1, "a/b", 0, 0, "a", [], msgpack.ExtType(EXT_NDARRAY, body)])


@pytest.mark.parametrize("buf,match", [
    (_ext("<f4", [3], b"\0" * 8), "needs 12 bytes"),
    (_ext("<f4", [-1], b""), "non-negative"),
    (_ext("|O", [1], b"\0" * 8), "not an allowed"),
    (_ext("<f4", [2 ** 40, 2 ** 40], b""), "needs"),
    (msgpack.packb([1, "a", 0, 0, "a", [], msgpack.ExtType(9, b"")]), "unknown msgpack ext"),
    (msgpack.packb({"not": "an envelope"}), "not an iotrt envelope"),
    (msgpack.packb([1, "a", "seq", 0, "a", [], None]), "wrong types"),
    (b"\xc1", "not a valid message"),
    (b"", "not a valid message"),
])
def test_malformed_bytes_raise_decode_error(buf, match):
    with pytest.raises(DecodeError, match=match):
        decode(buf)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 63), 2 ** 64 - 1),
    st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=20),
)
arrays = hnp.arrays(
    st.sampled_from(sorted(ARRAY_DTYPES)),
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)
values = st.recursive(
    st.one_of(scalars, arrays),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-5, 5)), inner, max_size=4),
    ),
    max_leaves=12,
)


def same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and a.tobytes() == b.tobytes() and not b.flags.writeable)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=300, deadline=None)
@given(values, st.integers(0, 2 ** 63 - 1), st.integers(0, 2 ** 63 - 1))
def test_property_roundtrip(data, seq, stamp):
    env = decode(encode(Envelope("n/o", seq, stamp, "n", [["n", stamp]], data)))
    assert (env.seq, env.stamp_ns) == (seq, stamp)
    assert same(data, env.data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_property_random_bytes_only_raise_decode_error(buf):
    try:
        decode(buf)
    except DecodeError:
        pass


@settings(max_examples=500, deadline=None)
@given(values, st.data())
def test_property_mutated_messages_decode_or_raise_decode_error(data, draw):
    buf = bytearray(encode(Envelope("n/o", 1, 2, "n", [], data)))
    for _ in range(draw.draw(st.integers(1, 4))):
        op = draw.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = draw.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[i] ^= draw.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[i:]
        else:
            buf[i:i] = draw.draw(st.binary(min_size=1, max_size=8))
    try:
        env = decode(bytes(buf))
    except DecodeError:
        return
    assert isinstance(env, Envelope)


def test_a_msgpack_timestamp_is_forwarded_alike_over_either_transport():
    """Another language's publisher may send msgpack's timestamp extension (-1), any of its
    values: a node forwards what it decoded in-process exactly as over NNG."""
    from iotrt.local import share

    for ts in (msgpack.Timestamp(5, 7), msgpack.Timestamp(2**63 - 1, 999_999_999)):
        env = decode(msgpack.packb([1, "a/b", 0, 1, "a", [], {"t": ts}]))
        assert env.data == {"t": ts}
        assert share(env.data) == decode(encode(env)).data == {"t": ts}
