"""The acknowledged command channel: retries, de-duplication, exactly-once across restarts."""

from __future__ import annotations

import threading
import uuid

import pytest

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
        assert srv.recv(timeout_s=0.5) is None  # answered internally, never delivered
        t.join(5)
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
        assert srv.recv(timeout_s=0.5) is None
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
    blob[5] = 0xC1  # damage the first record's body, not its length
    path.write_bytes(bytes(blob))
    s = IdStore(path)
    assert s.get("id0") is None
    assert s.get("id1") == {"id": "id1", "ok": True} and s.get("id2") is not None
    assert path.stat().st_size == len(blob)  # nothing truncated
