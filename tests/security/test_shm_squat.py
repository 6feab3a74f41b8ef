"""Attack 2: another local user creates /dev/shm/iotrt-<prefix>-... (the prefix is visible in
`ls /dev/shm`) so that a camera can never restart and the supervisor's clean-up crashes.
Here the graph runs as `nobody` and the attacker is a third uid."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from iotrt import shm
from iotrt.codec import DecodeError

ATTACKER = 12345


def as_uid(uid: int, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def squatted(other_user):
    """An output address and the segment names the attacker planted under its prefix."""
    address = f"ipc:///tmp/iotrt-sq-{os.getpid()}/door/cam-image"
    prefix = shm.segment_prefix(address)
    # names in the old and the new format alike: the attacker tries both
    names = [f"{prefix}-1-1", f"{prefix}-{'0' * 16}-1", f"{prefix}-x"]
    planted = as_uid(ATTACKER, f"""
        import os
        for n in {names!r}:
            os.close(os.open('/dev/shm/' + n, os.O_CREAT | os.O_WRONLY, 0o644))
        """)
    assert planted.returncode == 0, planted.stderr
    yield address, names
    for n in names:
        try:
            os.unlink(f"/dev/shm/{n}")
        except FileNotFoundError:
            pass


def test_foreign_segments_neither_crash_reclaim_nor_stop_a_publisher(squatted, other_user):
    address, names = squatted
    graph_user = other_user[0]
    run = as_uid(graph_user, f"""
        import numpy as np
        from iotrt import shm
        print("reclaimed", shm.reclaim({address!r}))          # the supervisor's clean-up
        w = shm.RingWriter(shm.segment_prefix({address!r}))  # a camera (re)starting
        assert w.sink(np.zeros(1 << 20, np.uint8)) is not None
        print("segment", w.name)
        w.close()
        """)
    assert run.returncode == 0, run.stderr
    assert "reclaimed 0" in run.stdout and "segment iotrt-" in run.stdout
    assert "belongs to uid 12345" in run.stderr          # reported, not fatal
    assert all(os.path.exists(f"/dev/shm/{n}") for n in names)   # and left alone


def test_segment_names_cannot_be_predicted():
    prefix = shm.segment_prefix(f"ipc:///tmp/iotrt-names-{os.getpid()}/x")
    names = []
    for _ in range(2):
        w = shm.RingWriter(prefix)
        w.sink(np.zeros(1 << 17, np.uint8))
        names.append(w.name)
        w.close()
    assert names[0] != names[1]
    assert all(str(os.getpid()) not in n.split("-")[2] for n in names)
    assert all(shm.NAME_RE.match(n) for n in names)


def test_reader_refuses_a_segment_of_another_user(squatted, other_user):
    address, _ = squatted
    w = shm.RingWriter(shm.segment_prefix(address))
    ext = w.sink(np.zeros(1 << 17, np.uint8))
    try:
        os.chown(f"/dev/shm/{w.name}", ATTACKER, ATTACKER)   # as if a stranger had made it
        with pytest.raises(DecodeError, match="belongs to uid 12345"):
            shm.RingReaders().read(ext.data)
    finally:
        w.close()
