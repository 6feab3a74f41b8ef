"""Every module of the package imports on its own, in a fresh interpreter (issue 18).

An import cycle held together by import order (A works only if B was imported first) or a
module that needs an optional package at import time shows up here as a failure naming the
module, instead of as a crash on a device that happens to import things in another order.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"iotrt": ROOT / "runtime", "iotrt.nodes": ROOT / "nodes"}


def modules() -> list[str]:
    found = []
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__main__" or "static" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append(".".join((package, *parts)))
    return found


def _import(module: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, timeout=120)
    return module, "" if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


def test_every_module_imports_in_a_fresh_interpreter():
    names = modules()
    assert "iotrt.supervisor" in names and "iotrt.nodes.action.lock" in names
    with ThreadPoolExecutor(max_workers=2) as pool:
        failed = {m: err for m, err in pool.map(_import, names) if err}
    assert not failed, "\n".join(f"{m}: {err}" for m, err in sorted(failed.items()))
