"""Peer processes for the multi-process tests: `python peer.py ROLE ADDRESS [args]`.

Every role prints "ready" once its sockets are set up, then one JSON line per result, so the
test can wait for conditions on stdout instead of sleeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

from iotrt.bus import Publisher, Subscriber
from iotrt.command import CommandServer


def out(obj) -> None:
    print(json.dumps(obj), flush=True)


def digest(data) -> str:
    """A content summary of a message's data that the test can recompute."""
    if isinstance(data, dict) and "array" in data:
        a = data["array"]
        return f"{a.dtype.str}{list(a.shape)}{hashlib.sha1(a.tobytes()).hexdigest()}"
    return repr(data)


def sub(address: str, count: str, queue: str = "2", delay_s: str = "0") -> None:
    """Receive until `count` messages or the one with seq count-1 arrived (or 5 s of silence)."""
    s = Subscriber(address, queue=int(queue))
    out("ready")
    got = 0
    while got < int(count):
        env = s.recv(timeout_s=5.0)
        if env is None:
            break
        got += 1
        out({"seq": env.seq, "digest": digest(env.data), "writeable":
             bool(env.data["array"].flags.writeable) if isinstance(env.data, dict)
             and "array" in env.data else None})
        if env.seq >= int(count) - 1:
            break
        time.sleep(float(delay_s))
    out({"stats": s.stats()})


def pub(address: str, count: str, size: str) -> None:
    """Publish `count` uint8 arrays of `size` bytes (value = seq % 251), then wait to be killed."""
    import numpy as np

    p = Publisher(address, "peer/out", "peer")
    out("ready")
    for i in range(int(count)):
        p.publish({"array": np.full(int(size), i % 251, np.uint8)})
    out({"published": int(count), "pid": os.getpid()})
    time.sleep(3600)


def frame_checker(address: str, seconds: str) -> None:
    """Read frames for `seconds`; each must be uniform with value seq % 251 (never torn)."""
    s = Subscriber(address, queue=64)
    out("ready")
    good = corrupt = 0
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        env = s.recv(timeout_s=0.5)
        if env is None:
            continue
        a = env.data["array"]
        if a[0] == env.seq % 251 and (a == a[0]).all():
            good += 1
        else:
            corrupt += 1
    out({"good": good, "corrupt": corrupt, "stats": s.stats()})


def hold(address: str, count: str) -> None:
    """Receive `count` frames and keep them (their shared-memory leases) until killed."""
    s = Subscriber(address, queue=8)
    out("ready")
    kept = []
    while len(kept) < int(count):
        env = s.recv(timeout_s=10)
        if env is None:
            break
        kept.append(env.data)
    out("holding")
    time.sleep(3600)


def cmd_server(address: str, store: str, handled_log: str) -> None:
    """Apply commands by appending their id to `handled_log`, then ack.

    A command whose data is {"crash": "before_reply"} is applied and its ack persisted, and
    the process dies before sending it (the ack is lost on the way back)."""
    srv = CommandServer(address, store_path=store)
    out("ready")
    while True:
        cmd = srv.recv()
        with open(handled_log, "a") as f:
            f.write(cmd.id + "\n")
            f.flush()
            os.fsync(f.fileno())
        if isinstance(cmd.data, dict) and cmd.data.get("crash") == "before_reply":
            srv._store.set(cmd.id, {"id": cmd.id, "ok": True, "result": cmd.data})
            os._exit(9)
        cmd.reply({"result": cmd.data})


if __name__ == "__main__":
    {"sub": sub, "pub": pub, "cmd_server": cmd_server, "frame_checker": frame_checker,
     "hold": hold}[sys.argv[1]](*sys.argv[2:])
