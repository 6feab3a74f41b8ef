"""Issue 13 item 7: a log reader that stops reading must not stop supervision. The supervisor's
stdout/stderr is a pipe nobody reads while a node logs 4 KB lines at 50 Hz: the pipe fills in
well under a second, yet `iotrt ps` keeps answering and a killed node is restarted (before the
fix the supervisor blocked in write() and did neither)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from graphrun import env, graph_file, h, marker_pids  # noqa: F401 (pytest fixtures)

from iotrt.control import call
from iotrt.verbs._graph import control_address


def test_stalled_log_reader_never_blocks_supervision(graph_file, env, tmp_path, h):
    marker = tmp_path / "steady.pids"
    g = graph_file(f"""
        name: chatty
        supervisor: {{backoff: {{initial_s: 0.1}}}}
        nodes:
          - id: talker
            run: {{node}}
            params: {{behaviour: chatty, period_s: 0.02, after_s: 1000}}
          - id: steady
            run: {{node}}
            params: {{marker: {marker}}}
    """)
    r, w = os.pipe()                          # the reader end stays open and is never read
    proc = subprocess.Popen([sys.executable, "-m", "iotrt", "up", str(g)], env=env,
                            stdout=w, stderr=w)
    os.close(w)
    try:
        address = control_address(str(g), env)
        h.wait_for(lambda: marker_pids(marker), 30, "the steady node to start")

        # Full: the talker writes 200 KB/s, yet the pipe holds no more than a second ago.
        # (How many bytes a full 64 KiB pipe holds depends on how the writes split into pages:
        # 52 KB when each 4 KB line is its own write, as on a loaded machine.)
        seen = [-1]

        def pipe_full():
            held, seen[0] = seen[0], _pipe_bytes(r)
            return seen[0] >= 32_000 and seen[0] == held
        h.wait_for(pipe_full, 30, "the unread output pipe to fill", poll=1.0)
        h.wait_for(lambda: all(n["state"] == "running" for n in call(address, "ps")["nodes"]),
                   20, "every node running, as `iotrt ps` tells while the pipe is full")
        first = marker_pids(marker)[0]
        os.kill(first, signal.SIGKILL)
        h.wait_for(lambda: len(marker_pids(marker)) >= 2, 20, "the killed node's restart")
        rows = {n["node"]: n for n in call(address, "ps")["nodes"]}
        assert rows["steady"]["restarts"] == 1
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        os.close(r)
        for pid in marker_pids(marker):
            if h.alive(pid):
                os.kill(pid, signal.SIGKILL)


def _pipe_bytes(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    import fcntl
    import struct
    import termios
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
