"""systemd's notify protocol (sd_notify) in a few lines of socket code, no dependency.

systemd passes $NOTIFY_SOCKET to a Type=notify service; the service sends datagrams such as
"READY=1", "WATCHDOG=1", "STATUS=...", "STOPPING=1". $WATCHDOG_USEC (with $WATCHDOG_PID naming
the process it is meant for) asks for a WATCHDOG=1 at least that often. Outside systemd every
call is a no-op, so the supervisor calls it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

log = logging.getLogger("iotrt.sdnotify")

# Variables that are meant for the supervisor alone: a node must not inherit them, or it could
# tell systemd READY=1 on the supervisor's behalf (and a node's stderr is a pipe to the
# supervisor, not the journal stream JOURNAL_STREAM names).
SYSTEMD_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):            # Linux abstract socket namespace
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        self._sock = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_s: float | None = None
        usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        """Send e.g. notify("READY=1", "STATUS=all 5 nodes running")."""
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            # systemd going away must not take the graph down; it will restart us if it cares
            log.warning("sd_notify %s failed: %s", lines[0] if lines else "", exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
