"""Publisher/Subscriber between real processes over ipc and tcp."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import time

import numpy as np
import pytest
from helpers import wait_for

from iotrt.bus import (
    AddressError,
    Publisher,
    RuntimeDirError,
    Subscriber,
    check_address,
    ensure_runtime_dir,
    short_ipc_address,
)


def free_tcp_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def wait_subscribers(pub: Publisher, n: int = 1, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pub.subscribers < n:
        assert time.monotonic() < deadline, "subscriber never connected"
        time.sleep(0.005)


def digest(a: np.ndarray) -> str:
    return f"{a.dtype.str}{list(a.shape)}{hashlib.sha1(a.tobytes()).hexdigest()}"


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_messages_arrive_intact_across_processes(transport, rundir, peer):
    address = (short_ipc_address(rundir, "g", "src", "out") if transport == "ipc"
               else free_tcp_address())
    arrays = [
        np.arange(12, dtype="<f4").reshape(3, 4),
        np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8),  # via shm on ipc
        np.array([True, False]),
        np.arange(6, dtype=">i4"),  # big-endian is sent little-endian
    ]
    with Publisher(address, "src/out", "src") as pub:
        sub = peer("sub", address, len(arrays), 8)
        sub.wait_line('"ready"')
        wait_subscribers(pub)
        for a in arrays:
            pub.publish({"array": a})
        results = sub.wait_for(lambda p: [m for m in p.json_lines() if "stats" in m],
                               what="subscriber stats")
    got = [m for m in sub.json_lines() if isinstance(m, dict) and "seq" in m]
    assert [m["seq"] for m in got] == [0, 1, 2, 3]
    assert [m["digest"] for m in got] == [digest(np.asarray(a, a.dtype.newbyteorder("<")))
                                          for a in arrays]
    assert all(m["writeable"] is False for m in got)  # decoded arrays are read-only
    assert results[0]["stats"] == {"msgs": 4, "drops": 0, "bad": 0}


def test_slow_subscriber_does_not_slow_publisher_and_drops_are_counted(rundir, peer):
    address = short_ipc_address(rundir, "g", "fast", "out")
    n = 2000
    with Publisher(address, "fast/out", "fast") as pub:
        # reads one message every 20 ms with a queue of 2: it can take ~1 in 100 of them
        sub = peer("sub", address, n, 2, 0.02)
        sub.wait_line('"ready"')
        wait_subscribers(pub)
        t0 = time.perf_counter()
        for i in range(n):
            pub.publish({"i": i})
        elapsed = time.perf_counter() - t0
        assert pub.seq == n
        # the publisher never waited for the reader: it finished far sooner than n * 20 ms
        assert elapsed < n * 0.02 / 10, elapsed
        stats = sub.wait_for(lambda p: [m["stats"] for m in p.json_lines() if "stats" in m],
                             timeout_s=20, what="subscriber stats")[0]
    seqs = [m["seq"] for m in sub.json_lines() if isinstance(m, dict) and "seq" in m]
    assert stats["msgs"] == len(seqs) < n / 4
    assert seqs[-1] == n - 1  # latest wins: the newest message is delivered
    # every message is either received or counted as dropped
    assert stats["msgs"] + stats["drops"] == seqs[-1] + 1 - seqs[0]


def test_recv_timeout_and_clean_close(rundir):
    address = short_ipc_address(rundir, "g", "quiet", "out")
    with Publisher(address, "quiet/out", "quiet"), Subscriber(address) as sub:
        t0 = time.monotonic()
        assert sub.recv(timeout_s=0.1) is None
        assert 0.09 <= time.monotonic() - t0 < 2
        assert sub.recv_nowait() is None


def test_undecodable_bytes_are_counted_and_skipped(rundir):
    import pynng

    address = short_ipc_address(rundir, "g", "evil", "out")
    with pynng.Pub0(listen=address) as raw, Subscriber(address, queue=16) as sub:
        wait_for(lambda: raw.pipes, 5, "the subscriber to connect")
        from iotrt.codec import Envelope, encode

        raw.send(b"\xc1garbage")
        raw.send(encode(Envelope("evil/out", 0, 1, "evil", [], {"ok": True})))
        env = sub.recv(timeout_s=5)
        assert env.data == {"ok": True}
        assert sub.stats() == {"msgs": 1, "drops": 0, "bad": 1}


def test_short_ipc_addresses_fit_and_long_ones_are_refused(tmp_path):
    a = short_ipc_address("/run/iotrt/door", "door", "camera_with_a_long_name", "image")
    assert a.startswith("ipc:///run/iotrt/door/") and len(a) < 40
    assert a == short_ipc_address("/run/iotrt/door", "door", "camera_with_a_long_name", "image")
    assert a != short_ipc_address("/run/iotrt/door", "door", "camera_with_a_long_name", "depth")
    check_address(a)
    with pytest.raises(AddressError, match="107"):
        check_address(short_ipc_address("/tmp/" + "x" * 100, "g", "n", "p"))
    with pytest.raises(AddressError, match="must start with"):
        check_address("udp://1.2.3.4:5")


def test_runtime_dir_is_private(tmp_path):
    d = tmp_path / "rt"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    ensure_runtime_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    fresh = ensure_runtime_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    if os.getuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        os.chown(foreign, 12345, 12345)
        with pytest.raises(RuntimeDirError, match="belongs to uid 12345"):
            ensure_runtime_dir(foreign)


def test_ipc_socket_file_is_owner_only(rundir):
    address = short_ipc_address(rundir, "g", "n", "out")
    with Publisher(address, "n/out", "n"):
        mode = stat.S_IMODE(os.stat(address[len("ipc://"):]).st_mode)
        assert mode == 0o600


def test_property_random_bytes_never_crash_a_subscriber(rundir):
    """Hostile publishers: random and truncated bytes are counted as bad, nothing raises."""
    import pynng
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from iotrt.codec import Envelope, encode

    address = short_ipc_address(rundir, "g", "fuzz", "out")
    valid = encode(Envelope("fuzz/out", 0, 0, "fuzz", [], {"frame": np.zeros((300, 300), "u1")}))
    with pynng.Pub0(listen=address) as raw, Subscriber(address, queue=64) as sub:
        wait_for(lambda: raw.pipes, 5, "the subscriber to connect")

        @settings(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.lists(st.one_of(st.binary(max_size=64),
                                  st.integers(0, len(valid)).map(lambda n: valid[:n])),
                        min_size=1, max_size=6))
        def check(blobs):
            bad_before, msgs_before = sub.bad, sub.msgs
            for blob in blobs:
                raw.send(blob)
            marker = encode(Envelope("fuzz/out", 0, 0, "fuzz", [], "marker"))
            raw.send(marker)
            while True:
                env = sub.recv(timeout_s=5)
                assert env is not None, "the subscriber stopped delivering"
                if env.data == "marker":
                    break
            assert (sub.bad - bad_before) + (sub.msgs - msgs_before) == len(blobs) + 1

        check()


def _openssl(*args, cwd):
    import subprocess

    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    """A CA, a server certificate for localhost, a client certificate, and a stranger's."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path
    for ca in ("ca", "rogue"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                 f"/CN={ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("stranger", "rogue")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
                 f"{ca}.key", "-CAcreateserial", "-days", "2", "-extfile", "san.cnf",
                 "-out", f"{name}.crt", cwd=d)
        (d / f"{name}.pem").write_text((d / f"{name}.crt").read_text()
                                       + (d / f"{name}.key").read_text())
    return d


def test_tls_tcp_with_mutual_authentication(pki):
    from iotrt.bus import TlsConfig

    address = "tls+tcp" + free_tcp_address()[len("tcp"):]
    server = TlsConfig(ca_file=str(pki / "ca.pem"), cert_key_file=str(pki / "server.pem"))
    client = TlsConfig(ca_file=str(pki / "ca.pem"), cert_key_file=str(pki / "client.pem"),
                       server_name="localhost")
    stranger = TlsConfig(ca_file=str(pki / "ca.pem"), cert_key_file=str(pki / "stranger.pem"),
                         server_name="localhost")
    with Publisher(address, "cam/image", "cam", tls=server) as pub, \
            Subscriber(address, tls=client) as sub:
        wait_subscribers(pub)
        pub.publish({"array": np.arange(100_000, dtype=np.uint8)})  # inline: no shm over tcp
        env = sub.recv(timeout_s=10)
        assert env is not None and env.data["array"][-1] == 99_999 % 256
        # the stranger's certificate is not signed by our CA: it never gets connected.
        # (It joins after the legitimate subscriber: NNG's TLS listener can stall new
        # handshakes while a failing peer keeps retrying, a known limit for open ports.)
        with Subscriber(address, tls=stranger) as rogue:
            assert rogue.recv(timeout_s=0.5) is None and not rogue.connected
            assert pub.subscribers == 1
            pub.publish("still here")
            assert sub.recv(timeout_s=10).data == "still here"
    with pytest.raises(AddressError, match="no tls settings"):
        Subscriber(address)


def test_a_message_over_the_size_bound_is_never_decoded_and_the_next_ones_arrive(rundir):
    """A peer that sends more than MAX_MESSAGE: NNG drops its connection before the bytes are
    kept (decoding 1 MB of empty lists took 70 MB); the subscriber dials again and goes on."""
    import pynng

    from iotrt.bus import MAX_MESSAGE
    from iotrt.codec import Envelope, encode

    address = short_ipc_address(rundir, "g", "big", "out")
    with pynng.Pub0(listen=address) as raw, Subscriber(address, queue=16) as sub:
        wait_for(lambda: raw.pipes, 5, "the subscriber to connect")
        raw.send(b"\xdd" + (MAX_MESSAGE + 1).to_bytes(4, "big") + b"\x90" * (MAX_MESSAGE + 1))
        ok = encode(Envelope("big/out", 0, 1, "big", [], {"ok": True}))
        env, deadline = None, time.monotonic() + 10
        while env is None:        # the publisher sends until the subscriber is back
            assert time.monotonic() < deadline, "the subscriber never received again"
            raw.send(ok)
            env = sub.recv(timeout_s=0.1)
        assert env.data == {"ok": True} and sub.stats()["bad"] == 0


def test_the_cameras_largest_frame_fits_in_one_bus_message():
    """Over tcp:// a frame travels inline: the camera's largest (8K RGB, 99.5 MB) and its
    envelope must fit MAX_MESSAGE, or every subscriber drops it (and its connection) unsaid."""
    from iotrt.bus import MAX_MESSAGE
    from iotrt.codec import Encoder
    from iotrt.nodes.sensing.camera import MAX_HEIGHT, MAX_WIDTH

    frame = np.zeros((MAX_HEIGHT, MAX_WIDTH, 3), np.uint8)
    msg = Encoder().encode_fields("camera/image", 2**62, 2**62, "camera", [["camera", 2**62]] * 8,
                                  frame)
    assert len(msg) <= MAX_MESSAGE
    assert MAX_MESSAGE - MAX_WIDTH * MAX_HEIGHT * 3 >= 16 << 20   # headroom for the envelope


def test_an_8k_frame_arrives_over_tcp():
    from iotrt.nodes.sensing.camera import MAX_HEIGHT, MAX_WIDTH

    address = free_tcp_address()
    frame = np.zeros((MAX_HEIGHT, MAX_WIDTH, 3), np.uint8)
    frame[::97, ::89] = 200
    with Publisher(address, "cam/image", "cam") as pub, Subscriber(address, queue=2) as sub:
        wait_subscribers(pub)
        env, deadline = None, time.monotonic() + 30
        while env is None:      # the subscriber may still be subscribing: send until it has one
            assert time.monotonic() < deadline, "the 8K frame never arrived"
            pub.publish(frame)
            env = sub.recv(timeout_s=2)
        assert env.data.shape == frame.shape and np.array_equal(env.data, frame)
        assert sub.stats()["bad"] == 0


def test_a_message_over_the_bound_is_refused_by_the_publisher_and_nothing_is_sent():
    """Not sent and then dropped by every subscriber unsaid: publish raises EncodeError (the
    Node API's NotEncodable) naming the size and the limit, and the stream goes on."""
    from iotrt.bus import MAX_MESSAGE
    from iotrt.codec import EncodeError

    address = free_tcp_address()
    with Publisher(address, "big/out", "big") as pub, Subscriber(address, queue=4) as sub:
        wait_subscribers(pub)
        with pytest.raises(EncodeError, match=r"'big/out'.* 134,2\d\d,\d\d\d bytes, more than the "
                                              rf"bus takes \({MAX_MESSAGE:,} bytes"):
            pub.publish(np.zeros(MAX_MESSAGE + 1, np.uint8))
        assert pub.seq == 0 and pub.msgs == 0
        env, deadline = None, time.monotonic() + 10
        while env is None:
            assert time.monotonic() < deadline, "nothing arrived after the refused message"
            pub.publish("next")
            env = sub.recv(timeout_s=0.2)
        assert env.data == "next" and sub.stats()["bad"] == 0
