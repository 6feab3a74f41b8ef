"""deploy/check-arm64.sh without the emulation: its arguments, where it finds the Debian archive,
and how it decides about (and guards) its cache. `--plan` prints the decisions and stops, so
none of this needs root, debootstrap or qemu. The full check is run by hand (docs/deploy.md)."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "check-arm64.sh"


@pytest.fixture
def apt(tmp_path):
    """An apt configuration folder (IOTRT_CHECK_APT_DIR) with a deb822 sources file."""
    d = tmp_path / "apt"
    (d / "sources.list.d").mkdir(parents=True)
    (d / "sources.list.d" / "debian.sources").write_text(
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://old.example/debian\nSuites: bullseye\nComponents: main\n\n"
        "Types: deb\n# a comment inside the stanza\nURIs: http://archive.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    return d


def check(*args, apt_dir, env=None):
    environ = {k: v for k, v in os.environ.items() if k != "IOTRT_CHECK_CACHE"}
    environ.update({"IOTRT_CHECK_APT_DIR": str(apt_dir), **(env or {})})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=environ, timeout=60)


def plan(cache, apt_dir, *args, env=None) -> dict[str, str]:
    result = check("--plan", "--cache", str(cache), *args, apt_dir=apt_dir, env=env)
    assert result.returncode == 0, result.stderr
    return {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in result.stdout.splitlines())}


def test_help_lists_the_options(apt):
    result = check("--help", apt_dir=apt)
    assert result.returncode == 0
    for option in ("--arch", "--cache", "--rebuild", "--keep", "--plan", "--fps", "--timeout"):
        assert option in result.stdout


@pytest.mark.parametrize("args, complaint", [
    (["--frobnicate"], "unknown argument '--frobnicate'"),
    (["--arch", "sparc"], "--arch 'sparc'"),
    (["--arch"], "--arch needs a value"),
    (["--fps", "0"], "--fps '0'"),
    (["--fps", "two"], "--fps 'two'"),
    (["--timeout", "-5"], "--timeout '-5'"),
    (["--timeout", "99999999999999999999"], "--timeout '99999999999999999999'"),
    (["--suite", "../etc"], "--suite '../etc'"),
    (["--cache", "/"], "--cache /"),
])
def test_bad_arguments_exit_2_and_say_why(tmp_path, apt, args, complaint):
    result = check("--plan", "--cache", str(tmp_path / "c"), *args, apt_dir=apt)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert not (tmp_path / "c").exists()    # nothing created on bad input


def test_plan_on_a_new_cache_builds_and_creates_nothing_but_the_mark(tmp_path, apt):
    cache = tmp_path / "cache"
    p = plan(cache, apt)
    assert p["arch"].startswith("arm64 (qemu-aarch64")
    assert p["root"] == f"{cache}/roots/bookworm-arm64: build (no cached root)"
    assert p["mirror"] == "http://archive.example/debian"
    assert sorted(f.name for f in cache.iterdir()) == [".iotrt-check-cache", ".lock-arm64"]


def test_armhf_uses_qemu_arm_and_armv7_wheels(tmp_path, apt):
    p = plan(tmp_path / "cache", apt, "--arch", "armhf", "--suite", "bullseye")
    assert p["arch"] == "armhf (qemu-arm, pip platform armv7l)"
    assert p["root"].endswith("roots/bullseye-armhf: build (no cached root)")
    assert p["mirror"] == "http://old.example/debian"


def test_cached_root_is_reused_only_with_the_same_recipe(tmp_path, apt):
    cache = tmp_path / "cache"
    recipe = plan(cache, apt)["recipe"]
    base = cache / "roots" / "bookworm-arm64"
    (base / "usr" / "bin").mkdir(parents=True)
    assert plan(cache, apt)["root"].endswith(": rebuild (the cached root has no recipe)")
    Path(f"{base}.recipe").write_text(recipe + "\n")
    assert plan(cache, apt)["root"].endswith(": reuse")
    assert plan(cache, apt, "--rebuild")["root"].endswith(": rebuild (--rebuild)")
    assert plan(cache, apt, "--arch", "armhf")["root"].endswith("bookworm-armhf: build (no cached root)")
    Path(f"{base}.recipe").write_text(recipe.replace("recipe=", "recipe=0") + "\n")
    assert plan(cache, apt)["root"].endswith(": rebuild (recipe changed)")


def test_an_interrupted_build_is_never_reused(tmp_path, apt):
    cache = tmp_path / "cache"
    recipe = plan(cache, apt)["recipe"]
    (cache / "roots" / "bookworm-arm64.tmp" / "usr").mkdir(parents=True)
    Path(f"{cache}/roots/bookworm-arm64.recipe").write_text(recipe + "\n")
    assert plan(cache, apt)["root"].endswith(": build (an earlier build did not finish; discarded)")


def test_refuses_a_cache_folder_that_is_not_its_own(tmp_path, apt):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    result = check("--plan", "--cache", str(home), apt_dir=apt)
    assert result.returncode == 1
    assert "is not an iotrt-check cache" in result.stderr
    assert sorted(f.name for f in home.iterdir()) == ["thesis.tex"]


def test_a_second_run_of_one_arch_on_the_same_cache_is_refused(tmp_path, apt):
    cache = tmp_path / "cache"
    plan(cache, apt)
    with open(cache / ".lock-arm64", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = check("--plan", "--cache", str(cache), apt_dir=apt)
        other_arch = check("--plan", "--cache", str(cache), "--arch", "armhf", apt_dir=apt)
    assert result.returncode == 1
    assert "another arm64 check is running" in result.stderr
    assert other_arch.returncode == 0, other_arch.stderr     # armhf has its own lock
    assert plan(cache, apt)["root"].endswith("build (no cached root)")   # free again


def test_cache_and_mirror_defaults(tmp_path, apt):
    (apt / "sources.list.d" / "debian.sources").unlink()
    (apt / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=arm64 signed-by=/usr/share/keyrings/k.gpg] http://line.example/debian bookworm main\n")
    cache = tmp_path / "from-env"
    result = check("--plan", apt_dir=apt, env={"IOTRT_CHECK_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    assert f"cache:       {cache}\n" in result.stdout
    assert "mirror:      http://line.example/debian\n" in result.stdout
    p = plan(cache, apt, "--mirror", "http://given.example/debian")
    assert p["mirror"] == "http://given.example/debian"
    (apt / "sources.list").unlink()
    assert plan(cache, apt)["mirror"].startswith("none found")


def test_the_command_docs_deploy_md_shows_is_valid(tmp_path, apt):
    docs = (SCRIPT.parents[1] / "docs" / "deploy.md").read_text()
    commands = [line.split("#")[0].split()[2:] for line in docs.splitlines()
                if line.startswith("sudo deploy/check-arm64.sh")]
    assert commands, "docs/deploy.md no longer shows how to run deploy/check-arm64.sh"
    for argv in commands:
        args = [str(tmp_path / "cache") if prev == "--cache" else a
                for prev, a in zip([None, *argv], argv)]
        result = check("--plan", *args, apt_dir=apt)
        assert result.returncode == 0, (argv, result.stderr)


def test_the_armhf_root_has_the_debian_packages_docs_deploy_md_tells_a_32_bit_user_to_install(tmp_path, apt):
    """The 32-bit check installs iotrt over the Debian packages that stand in for the
    dependencies without an armv7 wheel: the same ones docs/deploy.md's apt-get line names."""
    arm64 = set(plan(tmp_path / "cache", apt)["recipe"].split("include=")[1].split(","))
    armhf = set(plan(tmp_path / "cache", apt, "--arch", "armhf")["recipe"].split("include=")[1].split(","))
    stand_ins = armhf - arm64 - {"python3-ply"}    # debootstrap's resolver needs it named
    assert {"python3-numpy", "python3-yaml", "python3-msgpack"} <= stand_ins
    docs = (SCRIPT.parents[1] / "docs" / "deploy.md").read_text()
    section = docs[docs.index("### 32-bit"):]
    words = section[section.index("sudo apt-get install"):].split("\n\n")[0].replace("\\\n", " ").split()
    assert stand_ins <= set(words), stand_ins - set(words)
