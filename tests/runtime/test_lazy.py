"""iotrt.lazy: the modules a running graph's processes defer are loaded on first use, and work
as the real ones do then (each check in a fresh interpreter: deferring changes sys.modules)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_node_process_imports_neither_asyncio_nor_ssl_until_used():
    out = run("""
        from iotrt.lazy import LazyModule, defer_rarely_used
        defer_rarely_used()
        import sys
        import iotrt.launch, iotrt.node       # pynng (asyncio), command (uuid), rundir (tempfile)
        lazy = sorted(n for n, m in sys.modules.items() if isinstance(m, LazyModule))
        print(lazy, "ssl" in sys.modules)
    """)
    assert out.strip() == "['asyncio', 'difflib', 'tempfile', 'uuid'] False"


def test_a_deferred_module_works_when_used():
    out = run("""
        from iotrt.lazy import LazyModule, defer_rarely_used
        defer_rarely_used()
        import sys, asyncio, uuid
        from iotrt.command import CommandClient     # makes command ids with uuid.uuid4()
        from tempfile import mkdtemp                # a from-import loads the module at once
        assert not isinstance(sys.modules["tempfile"], LazyModule)
        assert len(uuid.uuid4().hex) == 32 and not isinstance(sys.modules["uuid"], LazyModule)
        async def two():
            return 2
        print(asyncio.run(two()), "ssl" in sys.modules)
    """)
    assert out.strip() == "2 True"
