"""iotrt.wakeup: the self-pipe the node loop, the web taps and `iotrt record` wake on."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import textwrap

from iotrt import wakeup


def test_drain_takes_every_pending_wakeup_and_returns_on_an_empty_pipe():
    r, w = wakeup.pipe()
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(r, selectors.EVENT_READ)
            os.write(w, b"w" * 2000)          # more than one read's worth
            assert sel.select(0)
            wakeup.drain(r)
            assert sel.select(0) == []        # not readable: the loop sleeps again
            wakeup.drain(r)                   # nothing pending: returns, does not block
    finally:
        os.close(r)
        os.close(w)


def test_a_waker_never_blocks_on_a_full_pipe_and_wake_returns_there():
    r, w = wakeup.pipe()
    try:
        written = 0
        while True:          # a loop that is not draining: the pipe fills, the writer is told
            try:
                written += os.write(w, b"w" * 4096)
            except BlockingIOError:
                break
        assert written > 0
        wakeup.wake(w)                        # full: a wakeup is pending, wake() returns
        with selectors.DefaultSelector() as sel:
            sel.register(r, selectors.EVENT_READ)
            assert sel.select(0)
        wakeup.drain(r)
        wakeup.wake(w)                        # drained: room for the next wakeup
        assert os.read(r, 16) == b"w"
    finally:
        os.close(r)
        os.close(w)


def test_drain_returns_once_the_write_end_is_closed():
    r, w = wakeup.pipe()
    os.write(w, b"w")
    os.close(w)
    try:
        wakeup.drain(r)                       # EOF ends it, as an empty pipe does
        assert os.read(r, 1) == b""
    finally:
        os.close(r)


def test_a_signal_wakes_a_loop_through_the_pipe():
    """In a fresh interpreter: the signal wakeup fd and handlers are process-wide."""
    code = textwrap.dedent("""
        import os, selectors, signal, threading
        from iotrt import wakeup
        r, w = wakeup.pipe()
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)    # refuses a blocking fd
        signal.signal(signal.SIGUSR1, lambda *_: None)
        sel = selectors.DefaultSelector()
        sel.register(r, selectors.EVENT_READ)
        threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGUSR1)).start()
        print(len(sel.select(10)))                            # woken by the signal
        wakeup.drain(r)
        print(len(sel.select(0)))                             # drained: asleep again
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "0"]
