"""The README quickstart, followed as a new user would: in a fresh copy of the project, a
fresh virtualenv, the README's first command exactly as written, until the door graph is up and
deciding; then Ctrl-C (SIGINT) stops it cleanly."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    first = blocks[0].strip()
    assert "iotrt up configs/door.yaml" in first, "the first README command runs the door graph"
    return [c.strip() for c in first.split("&&")]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to copy the project")
def test_readme_quickstart_in_a_fresh_virtualenv(tmp_path):
    # A clean copy of what is committed or staged, as a user's checkout would be.
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    work = tmp_path / "iotrt"
    for f in files:
        if (ROOT / f).is_file():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, work / f)
    commands = quickstart_commands()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(IOTRT_STATE_DIR=str(tmp_path / "state"),
               IOTRT_RUNTIME_DIR=f"/tmp/iotrt-qs-{os.getpid()}", PIP_DISABLE_PIP_VERSION_CHECK="1",
               WEB_PORT="0")   # the web page on any free port: other graphs may hold 8080
    # `python3` in the README is the user's Python: here, the one running the tests.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for cmd in commands[:-1]:
        done = subprocess.run(shlex.split(cmd), cwd=work, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    up = subprocess.Popen(shlex.split(commands[-1]), cwd=work, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        os.set_blocking(up.stdout.fileno(), False)
        while time.monotonic() < deadline and up.poll() is None:
            chunk = up.stdout.readline()
            if not chunk:
                time.sleep(0.1)
                continue
            lines.append(chunk)
            text = "".join(lines)
            # The owner may be let in before the last process (observe) reports ready: wait for both.
            if "rule unlock_for_enrolled -> lock: unlock" in text and re.search(r"all \d+ nodes up", text):
                break
        text = "".join(lines)
        assert re.search(r"all \d+ nodes up", text), text[-3000:]
        assert "rule unlock_for_enrolled -> lock: unlock" in text, text[-3000:]
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        shutil.rmtree(env["IOTRT_RUNTIME_DIR"], ignore_errors=True)
