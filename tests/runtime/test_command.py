"""The acknowledged command channel: retries, de-duplication, exactly-once across restarts."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
from helpers import wait_for

from iotrt.bus import short_ipc_address
from iotrt.command import CommandClient, CommandServer, CommandTimeout, IdStore


def handled_ids(path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def test_every_command_handled_exactly_once_across_receiver_restarts(rundir, peer, tmp_path):
    address = short_ipc_address(rundir, "g", "lock", "commands")
    store, log = tmp_path / "lock.ids", tmp_path / "handled.log"
    server = peer("cmd_server", address, store, log)
    server.wait_line('"ready"')
    client = CommandClient(address, src="rules")
    ids = [f"cmd-{i}" for i in range(12)]
    acks = {}
    try:
        for i, cid in enumerate(ids):
            if i == 4:  # SIGKILL the receiver while idle; the next command waits for the new one
                server.kill()
                server = peer("cmd_server", address, store, log)
            if i == 8:
                # the receiver applies this one, persists the ack and dies before replying:
                # the client's retry must be answered by the restarted receiver from its store
                restart = threading.Timer(0.3, lambda: peer("cmd_server", address, store, log))
                restart.start()
                acks[cid] = client.call({"crash": "before_reply", "n": i}, id=cid,
                                        timeout_s=0.5, retries=20)
                restart.join()
                continue
            acks[cid] = client.call({"n": i}, id=cid, timeout_s=0.5, retries=20)
        # a duplicate sent after everything (a client that lost an ack and retried)
        assert client.call({"n": 3}, id="cmd-3", timeout_s=0.5) == acks["cmd-3"]
    finally:
        client.close()
    assert handled_ids(log) == ids  # each handled once, in order
    assert all(a["ok"] for a in acks.values())
    assert acks["cmd-8"]["result"] == {"crash": "before_reply", "n": 8}


def test_pending_id_after_crash_is_not_run_again(tmp_path, rundir):
    """A receiver that died between delivery and ack: the retry gets 'outcome unknown'."""
    store = tmp_path / "ids"
    s = IdStore(store)
    s.set("abc", "pending")
    s.close()
    address = short_ipc_address(rundir, "g", "n", "c")
    with CommandServer(address, store_path=store) as srv, CommandClient(address) as cli:
        result = {}
        t = threading.Thread(target=lambda: result.update(cli.call("x", id="abc")))
        t.start()
        delivered = []

        def answered():  # the server answers inside recv: receive until the client has it
            cmd = srv.recv(timeout_s=0.1)
            if cmd is not None:
                delivered.append(cmd)
            return result
        wait_for(answered, 10, "the answer to the pending id")
        t.join(5)
    assert not delivered  # answered internally, never delivered
    assert result["ok"] is False and "outcome unknown" in result["error"]


def test_client_times_out_with_a_clear_error(rundir):
    address = short_ipc_address(rundir, "g", "nobody", "c")
    with CommandClient(address) as cli, pytest.raises(CommandTimeout, match="after 2 attempts"):
        cli.call({"unlock": 5}, timeout_s=0.05, retries=1)


def test_id_store_survives_torn_tail_and_compacts(tmp_path):
    path = tmp_path / "ids"
    s = IdStore(path, capacity=4)
    for i in range(20):
        s.set(f"id{i}", {"id": f"id{i}", "ok": True})
    s.close()
    assert path.stat().st_size < 20 * 30  # compacted, not 20 records long
    with open(path, "ab") as f:
        f.write(b"\x40\x00\x00\x00partial")  # a record cut short by a crash
    s = IdStore(path, capacity=4)
    assert s.get("id19") == {"id": "id19", "ok": True}
    assert s.get("id0") is None  # beyond capacity
    s.set("new", {"ok": True})
    s.close()
    assert IdStore(path, capacity=4).get("new") == {"ok": True}


def test_malformed_request_gets_an_error_reply(rundir):
    import pynng

    from iotrt.codec import unpack

    address = short_ipc_address(rundir, "g", "n", str(uuid.uuid4()))
    with CommandServer(address) as srv, pynng.Req0(dial=address, recv_timeout=5000) as req:
        req.send(b"\xc1")

        def rejected():  # the server answers inside recv: receive until it has seen it
            assert srv.recv(timeout_s=0.1) is None  # never delivered as a command
            return srv.bad
        wait_for(rejected, 10, "the malformed request")
        reply = unpack(req.recv())
        assert reply["ok"] is False and "malformed" in reply["error"]
        assert srv.bad == 1


def test_id_store_skips_a_damaged_record_and_keeps_the_rest(tmp_path):
    path = tmp_path / "ids"
    s = IdStore(path)
    for i in range(3):
        s.set(f"id{i}", {"id": f"id{i}", "ok": True})
    s.close()
    blob = bytearray(path.read_bytes())
    blob[blob.index(b"id0") + 2] ^= 0xFF  # damage id0's record, not its length
    path.write_bytes(bytes(blob))
    s = IdStore(path)
    assert s.get("id0") is None
    assert s.get("id1") == {"id": "id1", "ok": True} and s.get("id2") is not None
    assert s.skipped == 1 and s.fenced  # id0 may have been pending: its retries are fenced
    s.close()
    assert path.read_bytes().startswith(bytes(blob))  # nothing truncated


def serve_one(srv: CommandServer, timeout_s: float = 10.0) -> threading.Thread:
    """Answer the next new command (ack {"result": its data}) in a thread."""
    def run():
        cmd = srv.recv(timeout_s=timeout_s)
        if cmd is not None:
            cmd.reply({"result": cmd.data})
    t = threading.Thread(target=run)
    t.start()
    return t


def test_pending_id_is_written_before_the_handler_sees_the_command(tmp_path, rundir):
    """The write-ahead order that makes a SIGKILL safe: the id is in the file (the kernel
    has it) when recv returns; the syncer then puts it on disk without the caller waiting."""
    store = tmp_path / "ids"
    address = short_ipc_address(rundir, "g", "n", "c")
    with CommandServer(address, store_path=store) as srv, CommandClient(address) as cli:
        t = threading.Thread(target=lambda: cli.call("x", id="cmd-42"))
        t.start()
        cmd = srv.recv(timeout_s=10)
        on_disk = IdStore(store)  # what a restarted receiver would read now
        assert on_disk.get("cmd-42") == "pending"
        on_disk.close()
        cmd.reply()
        t.join(10)
        assert srv._store.sync(timeout_s=10)
    s = IdStore(store)
    assert s.get("cmd-42") == {"id": "cmd-42", "ok": True} and not s.fenced


def store_file(path, *records) -> None:
    """Write an id store file from (id, state) records, as IdStore would."""
    from iotrt.codec import pack
    from iotrt.idstore import _record
    path.write_bytes(b"".join(_record(pack(list(r))) for r in records))


def test_store_left_open_by_another_boot_fences_retries_sent_before_it_opened(tmp_path,
                                                                            rundir):
    """After a power loss the unsynced tail may be gone: a retry of an unknown id whose first
    attempt predates the reopened store gets 'outcome unknown'; new commands run."""
    store = tmp_path / "ids"
    acked = {"id": "old", "ok": True, "result": 1}
    store_file(store, ("", {"boot": "a-boot-before-the-power-loss"}), ("old", acked))
    address = short_ipc_address(rundir, "g", "n", "c")
    with CommandClient(address) as cli:
        late, sent = {}, threading.Event()
        send = cli._sock.send
        cli._sock.send = lambda body: (sent.set(), send(body))
        # first sent while the receiver is down (queued, then retried) ...
        t = threading.Thread(target=lambda: late.update(
            cli.call("maybe-lost", id="lost", timeout_s=0.3, retries=40)))
        t.start()
        assert sent.wait(10)
        with CommandServer(address, store_path=store) as srv:  # ... and it comes back fenced
            assert srv._store.fenced
            delivered = []

            def answered():
                cmd = srv.recv_nowait()
                if cmd is not None:
                    delivered.append(cmd)
                return late
            wait_for(answered, timeout=20, what="the answer to the old command")
            t.join(10)
            assert not delivered  # answered internally, never run
            assert late["ok"] is False and "outcome unknown" in late["error"]
            server = serve_one(srv)
            assert cli.call("again", id="old") == acked  # what the store kept still holds
            # a command first sent once the fence is behind it (its attempts arrive within
            # 2 x 0.2 s, so it cannot be one that the power loss interrupted) runs
            wait_for(lambda: time.monotonic_ns() - srv._store.opened_ns > 0.5e9,
                     what="0.5 s since the store opened")
            assert cli.call({"unlock": 5}, id="new", timeout_s=0.2, retries=20) == {
                "id": "new", "ok": True, "result": {"unlock": 5}}
            server.join(10)
    # closed cleanly: the next open has nothing to fence
    assert not IdStore(store).fenced


def test_store_not_fenced_after_a_process_crash_or_a_clean_close(tmp_path):
    from iotrt.idstore import _boot_id
    crashed, closed = tmp_path / "crashed", tmp_path / "closed"
    store_file(crashed, ("", {"boot": _boot_id()}), ("a", "pending"))  # same boot, no close
    store_file(closed, ("", {"boot": "another boot"}), ("a", "pending"), ("", {"closed": True}))
    for path in (crashed, closed):
        s = IdStore(path)
        assert not s.fenced and s.get("a") == "pending"
        s.close()


def test_corrupt_tail_is_skipped_and_the_receiver_keeps_serving(tmp_path, rundir):
    store = tmp_path / "ids"
    address = short_ipc_address(rundir, "g", "n", "c")
    with CommandServer(address, store_path=store) as srv, CommandClient(address) as cli:
        server = serve_one(srv)
        first = cli.call("a", id="a")
        server.join(10)
    good = store.read_bytes()
    # a length that fits, then junk: the checksum, not the length, shows it is not a record
    store.write_bytes(good + b"\x10\x00\x00\x00" + bytes(range(200, 220)))
    with CommandServer(address, store_path=store) as srv, CommandClient(address) as cli:
        assert srv._store.skipped == 0  # a tail, cut off, not a record skipped in the middle
        server = serve_one(srv)  # recv answers the duplicate, then returns "b"
        assert cli.call("a", id="a") == first  # the retry is answered from the store
        assert cli.call("b", id="b")["ok"]
        server.join(10)
    s = IdStore(store)
    assert (s.get("a"), s.get("b")["ok"], s.skipped, s.fenced) == (first, True, 0, False)


def test_a_command_whose_id_cannot_be_written_is_refused_and_not_run(tmp_path, rundir):
    store = tmp_path / "ids"
    address = short_ipc_address(rundir, "g", "n", "c")
    with CommandServer(address, store_path=store) as srv, CommandClient(address) as cli:
        disk = srv._store._fd
        srv._store._fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
        try:
            result, delivered = {}, []
            t = threading.Thread(target=lambda: result.update(
                cli.call("x", id="full", timeout_s=5, retries=0)))
            t.start()

            def refused():
                cmd = srv.recv_nowait()
                if cmd is not None:
                    delivered.append(cmd)
                return result
            wait_for(refused, what="the refusal")
            t.join(10)
        finally:
            os.close(srv._store._fd)
            srv._store._fd = disk
        assert not delivered
        assert result["ok"] is False and "cannot persist" in result["error"]
        # not recorded as pending either: once the disk is back, the retry runs (once)
        server = serve_one(srv)
        assert cli.call("x", id="full") == {"id": "full", "ok": True, "result": "x"}
        server.join(10)


def test_an_ack_that_cannot_be_encoded_leaves_the_command_open_for_a_refusal(tmp_path, rundir):
    """A handler's ack with a value no message can carry raises, sends nothing and records
    nothing: the command can still be refused with the reason, and the client gets that."""
    from iotrt.codec import EncodeError

    address = short_ipc_address(rundir, "g", "n", "enc")
    with CommandServer(address, store_path=tmp_path / "ids") as srv, CommandClient(address) as cli:
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(cli.call("x", id="e1", timeout_s=5)))
        t.start()
        cmd = wait_for(lambda: srv.recv_nowait(), what="the command")
        with pytest.raises(EncodeError):
            cmd.reply({"result": object()})
        assert not cmd.answered
        cmd.reply({"ok": False, "error": "result not encodable"})
        t.join(10)
        assert result == {"id": "e1", "ok": False, "error": "result not encodable"}


def test_a_client_that_never_reads_its_acks_cannot_stall_the_receiver(tmp_path, rundir):
    """A peer that pipelines one command id over and over and reads no ack: the receiver
    drops the acks its connection cannot take, and keeps receiving (it blocked in send)."""
    import socket
    import struct

    import msgpack

    address = short_ipc_address(rundir, "g", "n", "slow")
    with CommandServer(address, store_path=tmp_path / "ids") as srv:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address[len("ipc://"):])
        s.sendall(b"\x00SP\x00" + struct.pack(">H", 0x30) + b"\x00\x00")   # a raw Req0
        s.recv(8)
        body = msgpack.packb({"id": "x" * 100, "data": None})
        stop = threading.Event()

        def pump():
            s.settimeout(0.2)
            i = 0
            while not stop.is_set():
                frame = struct.pack(">I", 0x80000000 | (i & 0x7FFFFFFF)) + body
                try:
                    s.sendall(b"\x01" + struct.pack(">Q", len(frame)) + frame)
                    i += 1
                except (TimeoutError, BlockingIOError):
                    pass
        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            first = wait_for(lambda: srv.recv(timeout_s=0.2), what="the command")
            first.reply({"result": "done"})
            # every duplicate is answered (or its ack dropped) and recv keeps returning
            turns = []

            def loop():
                for _ in range(10):
                    srv.recv(timeout_s=0.1)
                    turns.append(1)
            worker = threading.Thread(target=loop, daemon=True)
            worker.start()
            worker.join(20)
            assert not worker.is_alive(), f"recv stalled after {len(turns)} turns"
            assert srv.duplicates > 0
        finally:
            stop.set()
            t.join(5)
            s.close()
