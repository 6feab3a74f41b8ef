"""The self-pipe that wakes a select loop: another thread (or a signal, through
signal.set_wakeup_fd) writes a byte to the write end, the loop's selector sees the read end
readable, drains it and looks at what changed. Stdlib only, so the node loop, the verbs and the
built-in nodes all use this one.
"""

from __future__ import annotations

import os


def pipe() -> tuple[int, int]:
    """A (read, write) pipe, both ends non-blocking: a waker never blocks on a full pipe (a
    wakeup is pending then anyway), signal.set_wakeup_fd accepts the write end, and drain()
    returns once the pipe is empty."""
    return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)


def wake(fd: int) -> None:
    """Write a wakeup to the non-blocking write end `fd` (thread-safe): a full pipe means a
    wakeup is pending already, and is not an error."""
    try:
        os.write(fd, b"w")
    except BlockingIOError:
        pass


def drain(fd: int) -> None:
    """Read the non-blocking read end `fd` until it is empty (or its write end is closed):
    any number of wakeups count as one."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
