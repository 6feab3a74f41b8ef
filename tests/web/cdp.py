"""A headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe):
JSON messages separated by NUL bytes on the browser's fds 3 (commands) and 4 (replies). No
WebDriver and no websocket library needed; the browser is Debian's `chromium`."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(RuntimeError):
    pass


class Browser:
    def __init__(self, profile: Path, log: Path, size: tuple[int, int] = (1280, 1000)):
        exe = chromium()
        if exe is None:
            raise CdpError("no chromium on PATH")
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-extensions", "--disable-background-networking",
                 "--remote-debugging-pipe", f"--user-data-dir={profile}",
                 f"--window-size={size[0]},{size[1]}", "about:blank"]
        # bash puts the pipes on fds 3 and 4 (no preexec_fn: this process has NNG loaded)
        script = f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-'
        self._log = open(log, "w")
        self.proc = subprocess.Popen(["bash", "-c", script, exe, *flags], pass_fds=(cmd_r, out_w),
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=self.session)

    def call(self, method: str, session: str | None = None, timeout: float = 30.0,
             **params: Any) -> dict:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise CdpError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise CdpError(f"{method}: no reply within {timeout:g}s")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise CdpError(f"{method}: the browser went away")
            self._buf += chunk

    def page(self, method: str, **params: Any) -> dict:
        return self.call(method, session=self.session, **params)

    def navigate(self, url: str) -> None:
        self.page("Page.navigate", url=url)

    def js(self, expression: str) -> Any:
        """Evaluate in the page; returns the value (JSON-able), raises on a JS exception."""
        out = self.page("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in out:
            raise CdpError(f"JS error: {out['exceptionDetails'].get('text')}: {expression[:80]}")
        return out["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        os.close(self._cmd_w)
        os.close(self._out_r)
        self._log.close()
