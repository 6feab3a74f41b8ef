"""iotrt.lazy: the modules a running graph's processes defer are loaded on first use, and work
as the real ones do then (each check in a fresh interpreter: deferring changes sys.modules)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap


def run(*code: str) -> str:
    """Run the pieces of code, each dedented on its own, in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", "\n".join(map(textwrap.dedent, code))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_node_process_imports_neither_asyncio_nor_ssl_until_used():
    out = run("""
        from iotrt.lazy import LazyModule, defer_rarely_used
        defer_rarely_used()
        import sys
        import iotrt.launch, iotrt.node       # pynng (asyncio), command (uuid), rundir (tempfile)
        lazy = sorted(n for n, m in sys.modules.items() if isinstance(m, LazyModule))
        print(lazy, "_ssl" in sys.modules)
    """)
    assert out.strip() == ("['asyncio', 'difflib', 'hashlib', 'hmac', 'secrets', 'ssl', "
                           "'tempfile', 'uuid'] False")


OPENSSL = """
    def openssl():
        with open("/proc/self/maps") as f:
            return sorted({line.rsplit("/", 1)[-1].split(".so")[0] for line in f
                           if "/libcrypto.so" in line or "/libssl.so" in line})
"""


def test_the_door_graphs_camera_lock_and_rules_processes_map_no_openssl(tmp_path):
    """What the sensing process, the lock and the rule engine run at steady state (the sim
    camera rendering frames, a model file's hash, user rules in Python) loads neither OpenSSL
    nor numpy.random; the first hmac call then does (so the check can see it)."""
    (tmp_path / "rules.py").write_text("x = 1\n")
    body = f"""
        import sys
        import iotrt.launch, iotrt.node
        import iotrt.nodes.sensing.camera, iotrt.nodes.action.lock, iotrt.nodes.action.log
        from iotrt.nodes.sensing.scene import DoorScene
        from iotrt.hashing import file_sha256
        from iotrt.rules.api import _import_file
        scene = DoorScene()
        frames = [scene.render(t) for t in (0.5, 2.0, 7.0)]
        file_sha256(sys.executable)
        module, problems = _import_file(__import__("pathlib").Path({str(tmp_path)!r}) / "rules.py")
        assert module.x == 1 and not problems
        import hmac                          # a web node's token check, when a client comes
        print(openssl(), "numpy.random" in sys.modules, end=" ")
        hmac.compare_digest(b"a", b"a")
        print(openssl())
    """
    out = run(OPENSSL, "from iotrt.lazy import defer_rarely_used\ndefer_rarely_used()", body)
    assert out.strip() == "[] False ['libcrypto']"


def test_file_sha256_is_hashlibs_sha256(tmp_path):
    from iotrt.hashing import file_sha256

    data = bytes(range(256)) * 5000       # more than one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


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


def test_deferred_openssl_modules_work_when_used():
    out = run(OPENSSL, """
        from iotrt.lazy import defer_rarely_used
        defer_rarely_used()
        import hashlib, hmac, secrets, ssl
        print(openssl(), end=" ")
        assert hashlib.sha256(b"x").hexdigest().startswith("2d711642b726b044")
        assert hmac.compare_digest(b"a", b"a") and len(secrets.token_urlsafe(24)) == 32
        assert issubclass(ssl.SSLError, OSError)
        ctx = ssl.create_default_context()
        print(openssl(), type(ctx).__name__)
    """)
    assert out.strip() == "[] ['libcrypto', 'libssl'] SSLContext"
