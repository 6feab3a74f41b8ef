"""Where a graph keeps its sockets and its state, and the checks that keep them private.

A graph's ipc sockets live in a *runtime folder*. Another local user who can rename, replace or
create entries anywhere on the path to that folder can swap it for their own and listen on the
graph's addresses (which anyone can compute from the code), so `ensure_private_dir` checks every
directory on the path: each must belong to this user or to root and must not be writable by
anybody else; a root-owned sticky directory (such as /tmp) is a fine ancestor, because there
others can only add entries, never rename or remove ours. A symbolic link on the path counts
only if this user or root made it. A path that fails is refused with a `RuntimeDirError` that
names the directory and its owner, never repaired.

Default roots, first that is set: $IOTRT_RUNTIME_DIR, systemd's $RUNTIME_DIRECTORY,
$XDG_RUNTIME_DIR/iotrt (iotrt.config). Without any of them (a login without a session manager, a container)
the root is a fresh directory with an unpredictable name under /tmp (as `mkdtemp` makes), and
its path is recorded in the user's state root (`<state root>/runtime-dir`), so that `iotrt ps`,
`down` and every other process of the user find the same one; a recorded folder that is gone
(/tmp cleaned at boot) or no longer private is replaced by a new one.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from pathlib import Path
from typing import Mapping

from iotrt import config, errors

RUNTIME_POINTER = "runtime-dir"   # in the state root: the path of this user's runtime root


class RuntimeDirError(errors.SupervisionError, PermissionError):
    """A runtime or state folder that another local user could tamper with."""


def _trusted_owner(uid: int) -> bool:
    return uid in (os.getuid(), 0)


def check_trusted_path(path: str | os.PathLike) -> None:
    """Raise RuntimeDirError unless no other user can replace any directory on `path` (which
    must exist): every ancestor belongs to us or root and is not writable by others, except a
    root-owned sticky one; every symbolic link on the way was made by us or root."""
    p = Path(os.path.abspath(path))
    # links first: the lexical path is the one sockets are bound on
    for q in [*reversed(p.parents), p]:
        st = os.lstat(q)
        if stat.S_ISLNK(st.st_mode) and not _trusted_owner(st.st_uid):
            raise RuntimeDirError(f"{q} is a symbolic link made by uid {st.st_uid}, another "
                                  f"user: refusing to put sockets behind it")
    real = Path(os.path.realpath(p))
    for q in [*reversed(real.parents), real]:
        st = os.stat(q)
        if not stat.S_ISDIR(st.st_mode):
            raise RuntimeDirError(f"{q} is not a directory")
        if not _trusted_owner(st.st_uid):
            raise RuntimeDirError(
                f"{q} belongs to uid {st.st_uid}, another user, who could swap the graph's "
                f"sockets for their own; remove it or choose another runtime_dir "
                f"(or {config.ENV_RUNTIME_DIR})")
        sticky_root = st.st_uid == 0 and st.st_mode & stat.S_ISVTX
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_root:
            raise RuntimeDirError(
                f"{q} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}), who "
                f"could swap the graph's sockets for their own; make it 0755 or 0700, or "
                f"choose another runtime_dir (or {config.ENV_RUNTIME_DIR})")


def ensure_private_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and missing parents, 0700) as a directory only this user can enter.

    The path to it must be trusted (`check_trusted_path`); the folder itself must belong to this
    user, and a too-open mode is tightened to 0700."""
    p = Path(os.path.abspath(path))
    missing = [q for q in [p, *p.parents] if not os.path.lexists(q)]
    check_trusted_path(missing[-1].parent if missing else p)   # before we put anything there
    make_dirs_private(p)
    check_trusted_path(p)
    st = p.stat()
    if st.st_uid != os.getuid():
        raise RuntimeDirError(f"folder {p} belongs to uid {st.st_uid}, not to this user "
                              f"(uid {os.getuid()}); choose another one")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(p, 0o700)
    return p


def make_dirs_private(path: str | os.PathLike) -> Path:
    """Create `path` and its missing parents, each 0700 whatever the umask (os.makedirs gives
    the parents the umask's mode); existing folders are left as they are."""
    p = Path(os.path.abspath(path))
    for q in reversed([q for q in [p, *p.parents] if not os.path.lexists(q)]):
        try:
            os.mkdir(q, 0o700)
            os.chmod(q, 0o700)   # mkdir's mode is filtered by the umask
        except FileExistsError:
            pass   # made meanwhile
    return p


# Kept under its old name: the supervisor and tests call it for the graph's socket folder.
ensure_runtime_dir = ensure_private_dir


def default_runtime_root(environ: Mapping[str, str] = os.environ) -> Path:
    """Where graphs keep their sockets when the graph file does not say (module docstring)."""
    named = config.named_runtime_roots(environ)
    return named[0] if named else _recorded_runtime_root(config.state_root(environ))


def _usable(root: Path) -> bool:
    try:
        st = os.lstat(root)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return False
        check_trusted_path(root)
    except (OSError, RuntimeDirError):
        return False
    return True


def _recorded_runtime_root(state_root: Path) -> Path:
    """The root recorded in `state_root`, or a fresh private one, recorded there (under a lock,
    so that two processes starting at once agree on one)."""
    ensure_private_dir(state_root)
    pointer = state_root / RUNTIME_POINTER
    fd = os.open(state_root / (RUNTIME_POINTER + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            recorded = Path(pointer.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            recorded = None
        if recorded is not None and recorded.is_absolute() and _usable(recorded):
            return recorded
        root = Path(tempfile.mkdtemp(prefix="iotrt-", dir="/tmp"))   # 0700, unpredictable
        tmp = pointer.with_name(RUNTIME_POINTER + ".tmp")
        tmp.write_text(f"{root}\n", encoding="utf-8")
        os.replace(tmp, pointer)
        return root
    finally:
        os.close(fd)   # also releases the lock
