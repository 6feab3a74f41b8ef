#!/usr/bin/env bash
# Prove iotrt on a Raspberry Pi's architecture without a Pi: build (or reuse) a Debian root for
# arm64 (or armhf) with debootstrap, run it under qemu-user through binfmt_misc, install this
# checkout the way docs/deploy.md tells a Pi user, and run the door graph there.
#
#   deploy/check-arm64.sh [options]
#
#   --arch ARCH       arm64 (default; 64-bit Raspberry Pi OS) or armhf (32-bit, armv7)
#   --suite SUITE     Debian suite of the root (default bookworm, what Raspberry Pi OS 12 is)
#   --cache DIR       where roots, .debs and pip's cache are kept between runs
#                     (default $IOTRT_CHECK_CACHE, else ~/.cache/iotrt-check)
#   --mirror URL      Debian archive for debootstrap (default: the one apt uses on this host)
#   --fps N           sim camera frame rate in the emulated door graph (default 2)
#   --timeout S       how long the emulated graph may take to unlock and announce (default 1800)
#   --host-python PY  python with iotrt installed, for the x86 reference (default: .venv's)
#   --rebuild         discard the cached root and build it again
#   --keep            keep this run's root (CACHE/runs/...) for a look afterwards
#   --plan            print what would be done (settings, cache decision) and exit
#   -h, --help        this text
#
# Needs root (debootstrap, chroot, mounts), debootstrap and qemu-user-static. It mounts only
# under its own run folder (plus binfmt_misc if it was not mounted), registers its own binfmt
# entry only if none exists, and undoes all of it on exit. The host's /etc and services are
# never touched. Prints a summary table; exit 0 when every step passed (or, for armhf, was
# skipped for want of a package that has no armv7 wheel: see docs/deploy.md, "32-bit").
set -euo pipefail

usage() { sed -n '6,19p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "check-arm64: $*" >&2; exit 1; }
bad_usage() { echo "check-arm64: $*" >&2; echo "(deploy/check-arm64.sh --help)" >&2; exit 2; }
say() { printf '==> %s\n' "$*"; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RECIPE_VERSION=1          # bump when the base root's recipe changes: cached roots are rebuilt
CACHE_MARK=.iotrt-check-cache
# Debian's minimal system plus what docs/deploy.md tells a Pi user to apt-get install
# (python3-venv, libatomic1), and what every Raspberry Pi OS has: systemd, ca-certificates,
# procps (/bin/kill, which the unit's ExecReload names).
BASE_PACKAGES=python3,python3-venv,libatomic1,systemd,ca-certificates,procps
# 32-bit (armhf): the package index has no armv7 wheel of these dependencies; the Debian packages
# docs/deploy.md names stand in for them (python3-opencv is left out: with its ~170 libraries,
# Qt, VTK and GDAL among them, it is too heavy to install under emulation; pynng is in no
# Debian release). python3-ply is for debootstrap, whose resolver does not follow the virtual
# package (python3-ply-lex-3.10) that python3-pycparser, a dependency of python3-cffi, names.
ARMHF_APT=python3-numpy,python3-yaml,python3-msgpack,python3-psutil,python3-cffi,python3-lz4,python3-zstandard,python3-ply


# --- arguments -------------------------------------------------------------------------------

ARCH=arm64 SUITE=bookworm MIRROR="" FPS=2 TIMEOUT=1800 REBUILD=0 KEEP=0 PLAN=0
CACHE=${IOTRT_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/iotrt-check}
HOST_PY=""
APT_DIR=${IOTRT_CHECK_APT_DIR:-/etc/apt}   # where the host's apt sources are read from

need_value() { [ $# -ge 2 ] && [ -n "$2" ] || bad_usage "$1 needs a value"; }
is_uint() { [[ $1 =~ ^[0-9]{1,7}$ ]] && [ "$((10#$1))" -gt 0 ]; }   # 1 .. 9999999

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --arch) need_value "$@"; ARCH=$2; shift 2 ;;
            --suite) need_value "$@"; SUITE=$2; shift 2 ;;
            --cache) need_value "$@"; CACHE=$2; shift 2 ;;
            --mirror) need_value "$@"; MIRROR=$2; shift 2 ;;
            --fps) need_value "$@"; FPS=$2; shift 2 ;;
            --timeout) need_value "$@"; TIMEOUT=$2; shift 2 ;;
            --host-python) need_value "$@"; HOST_PY=$2; shift 2 ;;
            --rebuild) REBUILD=1; shift ;;
            --keep) KEEP=1; shift ;;
            --plan) PLAN=1; shift ;;
            -h|--help) usage 0 ;;
            *) bad_usage "unknown argument '$1'" ;;
        esac
    done
    case "$ARCH" in
        arm64) QARCH=aarch64 PIP_ARCH=aarch64 ;;
        armhf) QARCH=arm PIP_ARCH=armv7l BASE_PACKAGES=$BASE_PACKAGES,$ARMHF_APT ;;
        *) bad_usage "--arch '$ARCH': use arm64 or armhf" ;;
    esac
    [[ $SUITE =~ ^[a-z]+$ ]] || bad_usage "--suite '$SUITE': a Debian suite name such as bookworm"
    is_uint "$FPS" || bad_usage "--fps '$FPS': a whole number of frames per second, 1 or more"
    is_uint "$TIMEOUT" || bad_usage "--timeout '$TIMEOUT': a whole number of seconds, 1 or more"
    CACHE=$(realpath -m -- "$CACHE")
    [ "$CACHE" != / ] || bad_usage "--cache /: give a folder of its own"
    if [ -z "$HOST_PY" ]; then
        if [ -x "$REPO/.venv/bin/python" ]; then HOST_PY=$REPO/.venv/bin/python; else HOST_PY=python3; fi
    fi
    BASE=$CACHE/roots/$SUITE-$ARCH
}

# --- the host's Debian archive ---------------------------------------------------------------

# The archive apt on this host uses for the Debian suite (first match): deb822 .sources files
# ("URIs:" in a stanza whose "Suites:" has SUITE) or one-line "deb URL SUITE ..." entries.
host_mirror() {
    local f
    for f in "$APT_DIR"/sources.list.d/*.sources; do     # deb822
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '
            function flush() { if (uri != "" && ok && deb) { print uri; found = 1; exit } uri = ""; ok = 0; deb = 0 }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { if (!found) flush() }' "$f" | head -n1
    done
    { cat "$APT_DIR"/sources.list "$APT_DIR"/sources.list.d/*.list 2>/dev/null || true; } |
        awk -v suite="$SUITE" '$1 == "deb" {
            i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) { print $i; exit } }'
    return 0
}

# --- cache -----------------------------------------------------------------------------------

recipe() {
    echo "recipe=$RECIPE_VERSION suite=$SUITE arch=$ARCH variant=minbase include=$BASE_PACKAGES"
}

# reuse | build (...) | rebuild (...): what the run will do with the cached root.
cache_decision() {
    if [ "$REBUILD" = 1 ] && [ -d "$BASE" ]; then echo "rebuild (--rebuild)"; return; fi
    if [ ! -d "$BASE" ]; then
        if [ -d "$BASE.tmp" ]; then echo "build (an earlier build did not finish; discarded)"
        else echo "build (no cached root)"; fi
        return
    fi
    if [ ! -f "$BASE.recipe" ]; then echo "rebuild (the cached root has no recipe)"; return; fi
    if [ "$(cat "$BASE.recipe")" != "$(recipe)" ]; then echo "rebuild (recipe changed)"; return; fi
    echo reuse
}

# The cache folder must be ours (marked) or empty: --rebuild deletes inside it.
claim_cache() {
    if [ -d "$CACHE" ] && [ ! -f "$CACHE/$CACHE_MARK" ] && [ -n "$(ls -A "$CACHE")" ]; then
        die "$CACHE is not empty and is not an iotrt-check cache; give another --cache"
    fi
    mkdir -p "$CACHE"
    [ -f "$CACHE/$CACHE_MARK" ] || echo "iotrt deploy/check-arm64.sh cache: roots, .debs, pip cache" > "$CACHE/$CACHE_MARK"
    exec 9>"$CACHE/.lock-$ARCH"     # one run per architecture; arm64 and armhf may run together
    flock -n 9 || die "another $ARCH check is running with the cache $CACHE"
}

# Deletes a folder of the cache; refuses while anything is mounted under it.
remove_tree() {
    case "$1" in "$CACHE"/*) ;; *) die "refusing to delete $1 (outside $CACHE)" ;; esac
    if awk -v p="$1/" 'index($5 "/", p) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
        die "refusing to delete $1: something is still mounted under it"
    fi
    rm -rf --one-file-system -- "$1"
}

print_plan() {
    echo "arch:        $ARCH (qemu-$QARCH, pip platform $PIP_ARCH)"
    echo "suite:       $SUITE"
    echo "mirror:      ${MIRROR:-none found in $APT_DIR (give --mirror)}"
    echo "cache:       $CACHE"
    echo "root:        $BASE: $(cache_decision)"
    echo "recipe:      $(recipe)"
    echo "host python: $HOST_PY"
    echo "door graph:  CAMERA_SOURCE=sim CAMERA_FPS=$FPS, unlock and visitor within ${TIMEOUT}s"
}

# --- mounts, binfmt, processes in the root ---------------------------------------------------

MOUNTS=()            # mounted by this run, unmounted in reverse order on exit
BINFMT_ENTRY=""      # our binfmt entry, removed on exit ("" when an existing one is used)
BINFMT_NOTE="binfmt_misc was mounted already"
RUN=""

mount_in() {         # mount_in TARGET MOUNT-ARGS...
    local target=$1; shift
    mkdir -p "$target"
    mount "$@" "$target"
    MOUNTS+=("$target")
}

binfmt_setup() {
    local dir=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-$QARCH.conf magic mask
    if [ ! -e "$dir/register" ]; then
        mount -t binfmt_misc binfmt_misc "$dir"
        # A check mounted it: the last check to finish (arm64 and armhf may overlap) unmounts it.
        touch "$CACHE/.binfmt-mounted"
    fi
    if [ -f "$dir/qemu-$QARCH" ] && grep -q '^enabled' "$dir/qemu-$QARCH" \
            && grep -q '^flags:.*F' "$dir/qemu-$QARCH"; then
        return    # the system's own entry, with the interpreter opened at registration (F)
    fi
    [ -f "$conf" ] || die "no $conf (apt-get install qemu-user-static)"
    magic=$(cut -d: -f5 "$conf"); mask=$(cut -d: -f6 "$conf")
    BINFMT_ENTRY=iotrt-check-$QARCH
    [ -e "$dir/$BINFMT_ENTRY" ] && echo -1 > "$dir/$BINFMT_ENTRY"    # left by a killed run
    # F: the kernel opens the interpreter now, so the root needs no copy of it.
    echo ":$BINFMT_ENTRY:M::$magic:$mask:$(command -v "qemu-$QARCH-static"):F" > "$dir/register"
}

root_pids() {        # processes whose root is $1 (they can only be ours: the folder is this run's)
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$1" ] && echo "${p#/proc/}"
    done
    return 0
}

LEFT_PROCS=0 LEFT_MOUNTS=0
cleanup_mounts() {   # idempotent: stray processes, our mounts, our binfmt entry
    local i pids
    if [ -n "$RUN" ] && [ -d "$RUN/root" ]; then
        pids=$(root_pids "$RUN/root")
        if [ -n "$pids" ]; then
            LEFT_PROCS=$(echo "$pids" | wc -l)
            echo "check-arm64: killing $LEFT_PROCS process(es) left in the root: $(echo $pids)" >&2
            kill -KILL $pids 2>/dev/null
            sleep 1
        fi
    fi
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" || LEFT_MOUNTS=$((LEFT_MOUNTS + 1))
    done
    MOUNTS=()
    if [ -n "$BINFMT_ENTRY" ] && [ -e "/proc/sys/fs/binfmt_misc/$BINFMT_ENTRY" ]; then
        echo -1 > "/proc/sys/fs/binfmt_misc/$BINFMT_ENTRY"
    fi
    if [ -f "$CACHE/.binfmt-mounted" ]; then
        if ls /proc/sys/fs/binfmt_misc/iotrt-check-* >/dev/null 2>&1; then
            BINFMT_NOTE="binfmt_misc left mounted for the other check still running"
        else
            umount /proc/sys/fs/binfmt_misc && rm -f "$CACHE/.binfmt-mounted" \
                && BINFMT_NOTE="binfmt_misc unmounted"
        fi
    fi
    return 0
}

cleanup() {
    local rc=$?
    set +e
    cleanup_mounts
    if [ -n "$RUN" ] && [ -d "$RUN/logs" ]; then      # the logs outlive the run folder
        rm -rf "$CACHE/last-$ARCH-logs" && cp -r "$RUN/logs" "$CACHE/last-$ARCH-logs"
    fi
    if [ -n "$RUN" ] && [ "$KEEP" = 0 ] && [ "$LEFT_MOUNTS" = 0 ]; then remove_tree "$RUN"; fi
    exit "$rc"
}

# --- building the base root ------------------------------------------------------------------

build_base() {
    local decision=$1
    case "$decision" in reuse) return ;; esac
    say "base root: $decision"
    [ -n "$MIRROR" ] || die "no Debian archive for $SUITE in $APT_DIR; give --mirror"
    remove_tree "$BASE.tmp"
    [ -d "$BASE" ] && remove_tree "$BASE"
    rm -f "$BASE.recipe"
    mkdir -p "$CACHE/debs/$SUITE-$ARCH" "$CACHE/roots"
    local t0=$EPOCHREALTIME
    # Built in BASE.tmp and renamed when complete, so an interrupted build is never reused.
    nice -n 19 ionice -c3 debootstrap --arch="$ARCH" --variant=minbase --include="$BASE_PACKAGES" \
        --cache-dir="$CACHE/debs/$SUITE-$ARCH" "$SUITE" "$BASE.tmp" "$MIRROR" \
        > "$CACHE/roots/$SUITE-$ARCH.build.log" 2>&1 \
        || { tail -n 20 "$CACHE/roots/$SUITE-$ARCH.build.log" >&2; die "debootstrap failed (log: $CACHE/roots/$SUITE-$ARCH.build.log)"; }
    mv "$BASE.tmp" "$BASE"
    recipe > "$BASE.recipe"
    BUILD_S=$(elapsed "$t0")
}

# --- running things in the root --------------------------------------------------------------

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

ROOT_ENV=()
in_root() {          # in_root [VAR=VALUE...] CMD...: as root in the run's root, clean environment
    nice -n 19 ionice -c3 chroot "$RUN/root" /usr/bin/env -i \
        PATH=/opt/iotrt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb PIP_CACHE_DIR=/var/cache/iotrt-check-pip \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 "${ROOT_ENV[@]}" "$@"
}

# pip on this host may need a certificate bundle to reach the index: hand the same one to the root.
host_pip_cert() {
    local cert=${PIP_CERT:-}
    [ -n "$cert" ] || cert=$("$HOST_PY" -m pip config get global.cert 2>/dev/null || true)
    [ -f "$cert" ] && echo "$cert"
    return 0
}

prepare_run() {
    RUN=$CACHE/runs/$ARCH-$(date -u +%Y%m%dT%H%M%S)-$$
    mkdir -p "$RUN/logs" "$RUN/x86" "$CACHE/pip/$SUITE-$ARCH"
    say "run folder: $RUN"
    nice -n 19 ionice -c3 cp -a --reflink=auto "$BASE" "$RUN/root"
    local r=$RUN/root cert
    mount_in "$r/proc" -t proc proc
    mount_in "$r/sys" -t sysfs -o ro sysfs
    mount_in "$r/dev/shm" -t tmpfs -o mode=1777,size=256m tmpfs
    mount_in "$r/dev/pts" -t devpts -o newinstance,ptmxmode=0666 devpts
    mount_in "$r/run" -t tmpfs -o mode=0755,size=64m tmpfs
    mount_in "$r/var/cache/iotrt-check-pip" --bind "$CACHE/pip/$SUITE-$ARCH"
    cp -L /etc/resolv.conf "$r/etc/resolv.conf"    # the root's copy; the host's stays as it is
    cert=$(host_pip_cert)
    if [ -n "$cert" ]; then
        cp -L "$cert" "$r/etc/ssl/certs/iotrt-check-pip.pem"
        ROOT_ENV+=(PIP_CERT=/etc/ssl/certs/iotrt-check-pip.pem)
    fi
    # The checkout as a Pi user has it: tracked and new files, not what .gitignore leaves out.
    mkdir -p "$r/root/iotrt" "$r/root/check"
    (cd "$REPO" && git ls-files -z -c -o --exclude-standard |
        tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$r/root/iotrt"
    write_probe "$r/root/check/probe.py"
    cp "$r/root/check/probe.py" "$RUN/x86/probe.py"
}

# --- the Python side: run on the host (x86 reference, journal, wheels) and in the root ---------

write_probe() {
    cat > "$1" <<'EOF'
"""Helpers of deploy/check-arm64.sh (written by it; run on the host and in the emulated root)."""
import json, os, re, select, subprocess, sys, time
from pathlib import Path


def photos():
    import iotrt.nodes
    return sorted((Path(iotrt.nodes.__file__).parent / "sensing" / "data").glob("*.jpg"))


def run(artifact, out, inputs=None):
    """Outputs of ARTIFACT on the shipped sample photos, per backend, saved to OUT (.npz).
    INPUTS: an .npz of `run` whose preprocessed photos (input:*) are used instead of reading
    and preprocessing the photos here (a root without cv2)."""
    import numpy as np
    from iotrt.engine import BackendUnavailable, load
    if inputs:
        with np.load(inputs) as given:
            xs = {k.split(":", 1)[1]: given[k] for k in given.files if k.startswith("input:")}
    else:
        import cv2
        from iotrt.nodes.perception.blazeface import BlazeFace
        xs = {p.stem: BlazeFace().preprocess(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB))[0]
              for p in photos()}
    saved = {f"input:{stem}": x for stem, x in xs.items()}
    for backend in ("numpy", "opencv"):
        try:
            model = load(artifact, backend=backend)
        except BackendUnavailable as exc:     # e.g. opencv: no ONNX payload without `onnx`
            print(f"{backend}: {exc}")
            continue
        for stem, x in xs.items():
            for name, value in model.run({model.inputs[0].name: x}).items():
                saved[f"{backend}:{stem}:{name}"] = value
    np.savez(out, **saved)
    print(f"{len(saved)} arrays from {len(xs)} photos -> {out}")


def complete():
    """In a venv over the system's packages, after `pip install --no-deps` of iotrt: each of
    iotrt's requirements (no extras) is taken from the system (Debian's package) when it has a
    fitting version, else from a wheel of the package index, else it stays missing. One line
    each: name version how (system, wheel or missing)."""
    from importlib import metadata
    for req in metadata.requires("iotrt") or []:
        if "extra ==" in req:
            continue
        name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]
        ok = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--only-binary=:all:", req],
                            capture_output=True, text=True)
        if ok.returncode != 0:
            print(ok.stdout + ok.stderr, file=sys.stderr)
            print(f"{name} - missing")
            continue
        dist = metadata.distribution(name)
        how = "wheel" if str(dist.locate_file("")).startswith(sys.prefix) else "system"
        print(f"{dist.metadata['Name']} {dist.version} {how}")


def compare(ref, other):
    """Max |other - ref| per backend (and of the preprocessed inputs) that both ran, as JSON."""
    import numpy as np
    a, b = np.load(ref), np.load(other)
    common = sorted(set(a.files) & set(b.files))
    if not any(k.startswith("numpy:") for k in common):
        sys.exit(f"no numpy outputs in common: {sorted(a.files)} vs {sorted(b.files)}")
    # Per backend: the max absolute difference, and the max of |d| / max(1, |x86 value|): 1e-4
    # absolute for values up to 1, relative beyond (BlazeFace's logits reach ~200, where float32
    # resolves ~2e-5 and a different summation order moves the last bits).
    err = {}
    for key in common:
        kind = key.split(":")[0]
        ref = a[key].astype(np.float64)
        d = np.abs(ref - b[key].astype(np.float64))
        err[kind] = max(err.get(kind, 0.0), float(d.max()))
        if kind != "input":
            worst = float(np.max(d / np.maximum(1.0, np.abs(ref))))
            err[f"{kind}_scaled"] = max(err.get(f"{kind}_scaled", 0.0), worst)
    err["scale"] = max(float(np.max(np.abs(a[k]))) for k in common if not k.startswith("input:"))
    print(json.dumps(err))


def wait(iotrt, state_dir, t0, timeout, pid):
    """Follow the graph's journal (the one under STATE_DIR) until a door unlock and a visitor
    notification were applied; print their times (s after t0) as JSON. Exit 1 at the deadline
    or when the supervisor exits first."""
    deadline, t0, pid = time.time() + float(timeout), float(t0), int(pid)
    seen = {}
    def alive():
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
    while not (found := list(Path(state_dir).glob("*/journal.db"))):
        if time.time() > deadline or not alive():
            sys.exit(f"no journal under {state_dir}")
        time.sleep(0.5)
    journal = str(found[0])
    follow = subprocess.Popen([*iotrt, "events", "--journal", journal, "--follow", "--json", "-n", "100000"],
                              stdout=subprocess.PIPE, text=True)
    try:
        while "unlock_s" not in seen or "visitor_s" not in seen:
            left = deadline - time.time()
            if left <= 0 or not alive():
                sys.exit(json.dumps({"error": "timed out" if left <= 0 else "the supervisor exited", **seen}))
            if not select.select([follow.stdout], [], [], min(left, 1.0))[0]:
                continue
            line = follow.stdout.readline()
            if not line:
                sys.exit("iotrt events --follow ended")
            event = json.loads(line)
            f, at = event["fields"], round(event["t_ns"] / 1e9 - t0, 1)
            command = f.get("command") if isinstance(f.get("command"), dict) else {}
            if event["kind"] == "lifecycle" and f.get("state") == "running":
                seen.setdefault("first_ready_s", at)
            if event["kind"] != "command_applied" or not (f.get("result") or {}).get("ok", True):
                continue
            if command.get("action") == "unlock":
                seen.setdefault("unlock_s", at)
                seen.setdefault("unlock_who", command.get("who"))
            if command.get("event") == "visitor":
                seen.setdefault("visitor_s", at)
        print(json.dumps(seen))
    finally:
        follow.terminate()
        follow.wait()


def wheels(site, log):
    """One line per installed distribution: name version how (wheel tag, or built here)."""
    built = {m.lower().replace("_", "-") for m in re.findall(r"Building wheel for (\S+)", Path(log).read_text())}
    for info in sorted(Path(site).glob("*.dist-info")):
        meta = dict(l.split(": ", 1) for l in (info / "METADATA").read_text().splitlines()
                    if ": " in l and not l.startswith(" "))
        name = meta["Name"]
        tags = [l.split(": ", 1)[1] for l in (info / "WHEEL").read_text().splitlines() if l.startswith("Tag: ")]
        how = "built here" if name.lower().replace("_", "-") in built else "wheel"
        print(f"{name} {meta['Version']} {how} {tags[-1] if tags else '?'}")


def index(python_version, arch, report):
    """For each distribution in pip's REPORT (resolved for aarch64): the wheel the package index
    has for ARCH at that version, else the newest version that has one, else none."""
    items = json.load(open(report))["install"]
    minor = python_version.replace(".", "")
    plats = [f"manylinux_2_{m}_{arch}" for m in range(36, 16, -1)] + [f"manylinux2014_{arch}", f"linux_{arch}"]
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
            "--python-version", python_version, "--implementation", "cp",
            "--abi", f"cp{minor}", "--abi", "abi3", "--abi", "none"] + [f"--platform={p}" for p in plats]
    import tempfile
    for item in items:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if item.get("is_direct"):
            continue        # the project itself: pure Python, built from the checkout
        found = "none"
        for spec in (f"{name}=={version}", name):
            with tempfile.TemporaryDirectory() as d:
                if subprocess.run(args + ["-d", d, spec], capture_output=True).returncode == 0:
                    found = os.listdir(d)[0]
                    break
        print(f"{name} {version} {found}")


if __name__ == "__main__":
    verb, *rest = sys.argv[1:]
    if verb == "wait":
        wait(rest[0].split(), *rest[1:])
    else:
        {"run": run, "compare": compare, "wheels": wheels, "index": index,
         "complete": complete}[verb](*rest)
EOF
}

# --- the steps -------------------------------------------------------------------------------

RESULTS=()           # "step|result|detail", printed as the summary table
PACKAGES=()          # lines for the package table
FAILED=0 SKIPPED=()
record() {
    RESULTS+=("$1|$2|$3")
    case "$2" in ok|info) ;; skip) SKIPPED+=("$1") ;; *) FAILED=1 ;; esac
}
host_iotrt() { nice -n 19 "$HOST_PY" -m iotrt "$@"; }
probe_host() { nice -n 19 "$HOST_PY" "$RUN/x86/probe.py" "$@"; }
python_version() { basename "$(readlink -f "$BASE/usr/bin/python3")" | sed 's/^python//'; }

# What the package index offers this architecture, asked with pip on the host (no emulation):
# the dependency closure is resolved for aarch64, then each package is looked up for ARCH.
step_index() {
    local pyver report=$RUN/x86/resolve.json log=$RUN/logs/index.log plats=() m missing
    pyver=$(python_version)
    for m in $(seq 36 -1 17); do plats+=("--platform=manylinux_2_${m}_aarch64"); done
    if ! nice -n 19 "$HOST_PY" -m pip install -q --dry-run --ignore-installed --only-binary=:all: \
            "${plats[@]}" --platform=manylinux2014_aarch64 --platform=linux_aarch64 \
            --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" \
            --target "$RUN/x86/resolve" --report "$report" "$REPO" > "$log" 2>&1; then
        record "index ($ARCH)" FAIL "cannot resolve the dependencies for aarch64 wheels: $(grep -m1 ERROR "$log")"
        return
    fi
    if [ "$ARCH" = arm64 ]; then
        mapfile -t INDEX < <("$HOST_PY" -c '
import json, sys
for i in json.load(open(sys.argv[1]))["install"]:
    if not i.get("is_direct"):
        m = i["metadata"]; print(m["name"], m["version"], i["download_info"]["url"].rsplit("/", 1)[-1])
' "$report")
    else
        mapfile -t INDEX < <(probe_host index "$pyver" "$PIP_ARCH" "$report" 2>>"$log")
    fi
    missing=$(printf '%s\n' "${INDEX[@]}" | awk '$3 == "none" { printf "%s%s", sep, $1; sep = ", " }')
    if [ -n "$missing" ]; then
        record "index wheels ($PIP_ARCH)" info "${#INDEX[@]} packages; no $PIP_ARCH wheel for: $missing"
    else
        record "index wheels ($PIP_ARCH)" ok "${#INDEX[@]} packages, every one has a wheel for $PIP_ARCH, Python $pyver"
    fi
}

# deploy/install.sh exactly as docs/deploy.md says, with pip allowed wheels only (the project
# itself is built from the checkout: pure Python).
UNIT="" UNIT_NOTE=""

step_install() {
    local t0=$EPOCHREALTIME rc=0 log=$RUN/logs/install.log site line built nwheel cause

    say "install: deploy/install.sh install configs/door.yaml . (emulated; slow)"
    in_root PIP_ONLY_BINARY=:all: sh -c 'cd /root/iotrt && exec deploy/install.sh install configs/door.yaml .' \
        > "$log" 2>&1 || rc=$?
    INSTALL_S=$(elapsed "$t0")
    UNIT=$(cd "$RUN/root/etc/systemd/system" 2>/dev/null && ls iotrt-*.service 2>/dev/null | head -n1 || true)
    if [ "$rc" = 0 ]; then
        line="ran to the end in ${INSTALL_S}s"
        grep -q "Running in chroot" "$log" && line="$line; systemctl skipped daemon-reload/start (chroot: no systemd running)"
        record "install.sh" ok "$line"
    else
        line=$(grep -m1 -o "No matching distribution found for [^ ]*" "$log" || true)
        [ -n "$line" ] && line="needs compiling on the device (no wheel): ${line##* }; "
        cause=$(grep -E '^[A-Za-z.]*(Error|Exception): ' "$log" | tail -n1 || true)
        record "install.sh" FAIL "${line}exit $rc after ${INSTALL_S}s: $(grep -v '^\s*$' "$log" | tail -n1)${cause:+ (cause: $cause)}"
    fi
    site=$(ls -d "$RUN/root/opt/iotrt/venv/lib"/python3*/site-packages 2>/dev/null | head -n1 || true)
    if [ -n "$site" ]; then
        mapfile -t PACKAGES < <(probe_host wheels "$site" "$log")
        built=$(printf '%s\n' "${PACKAGES[@]}" | awk '$3 == "built" && $1 != "iotrt" { printf "%s%s", s, $1; s = ", " }')
        nwheel=$(printf '%s\n' "${PACKAGES[@]}" | awk '$3 == "wheel"' | wc -l)
        if [ -n "$built" ]; then record "packages" FAIL "built on the device: $built"
        else record "packages" ok "$nwheel from wheels; only iotrt itself built (pure Python)"; fi
    fi
    [ "$rc" = 0 ]
}

# 32-bit: what docs/deploy.md tells a 32-bit Pi user without a community wheel index: a venv
# that sees Debian's packages (the root has them: ARMHF_APT), iotrt from the checkout, and each
# requirement from the system, else a wheel; what has neither stays missing.
MISSING=""
step_install_apt() {
    local t0=$EPOCHREALTIME rc=0 log=$RUN/logs/install.log system wheels
    say "install: venv over Debian's packages, iotrt and the rest from wheels (emulated; slow)"
    in_root PIP_ONLY_BINARY=:all: sh -c 'python3 -m venv --system-site-packages /opt/iotrt/venv &&
        exec pip install --no-deps /root/iotrt' > "$log" 2>&1 || rc=$?
    if [ "$rc" = 0 ]; then
        mapfile -t PACKAGES < <(in_root PIP_ONLY_BINARY=:all: python /root/check/probe.py complete 2>>"$log") || rc=$?
    fi
    INSTALL_S=$(elapsed "$t0")
    if [ "$rc" != 0 ] || [ ${#PACKAGES[@]} = 0 ]; then
        record "install (32-bit)" FAIL "exit $rc after ${INSTALL_S}s: $(grep -v '^\s*$' "$log" | tail -n1)"
        return 1
    fi
    pick() { printf '%s\n' "${PACKAGES[@]}" | awk -v how="$1" '$3 == how { printf "%s%s", s, $1; s = ", " }'; }
    system=$(pick system) wheels=$(pick wheel) MISSING=$(pick missing)
    record "install (32-bit)" ok "in ${INSTALL_S}s; from Debian: ${system:-none}; wheels: ${wheels:-none}; missing (neither in the root nor an armv7 wheel): ${MISSING:-none}"
}

step_unit() {
    local out rc=0
    if [ -z "$UNIT" ]; then     # install.sh stopped before writing one: check `iotrt unit`'s
        in_root sh -c 'cd /root/iotrt && exec iotrt unit configs/door.yaml --python /opt/iotrt/venv/bin/python -o /etc/systemd/system/iotrt-check.service' \
            > "$RUN/logs/unit.log" 2>&1 || { record "unit verify" FAIL "install.sh wrote no unit; iotrt unit: $(tail -n1 "$RUN/logs/unit.log")"; return; }
        UNIT=iotrt-check.service
        UNIT_NOTE=" (written by iotrt unit: install.sh stopped before its unit)"
    fi
    out=$(in_root systemd-analyze verify "/etc/systemd/system/$UNIT" 2>&1) || rc=$?
    echo "$out" > "$RUN/logs/unit-verify.log"
    if [ "$rc" = 0 ] && [ -z "$out" ]; then record "unit verify" ok "systemd-analyze verify $UNIT: clean$UNIT_NOTE"
    else record "unit verify" FAIL "exit $rc: $(echo "$out" | head -n1)"; fi
}

step_validate() {
    local rc=0
    in_root sh -c 'cd /root/iotrt && exec iotrt validate configs/door.yaml' > "$RUN/logs/validate.log" 2>&1 || rc=$?
    if [ "$rc" = 0 ]; then record "validate" ok "iotrt validate configs/door.yaml: $(tail -n1 "$RUN/logs/validate.log")"
    else record "validate" FAIL "exit $rc: $(tail -n1 "$RUN/logs/validate.log")"; fi
}

step_compile() {
    local model t0 rc=0 err err2 same

    say "compile: shipped BlazeFace on x86 and in the root"
    model=$("$HOST_PY" -c 'from iotrt import models; print(models.path(models.BLAZEFACE))')
    host_iotrt compile "$model" -o "$RUN/x86/face.iotm" -q
    probe_host run "$RUN/x86/face.iotm" "$RUN/x86/ref.npz" > "$RUN/logs/x86-probe.log"
    model=$(in_root python -c 'from iotrt import models; print(models.path(models.BLAZEFACE))')
    t0=$EPOCHREALTIME
    in_root iotrt compile "$model" -o /root/check/face.iotm > "$RUN/logs/compile.log" 2>&1 || rc=$?
    COMPILE_S=$(elapsed "$t0")
    [ "$rc" = 0 ] || { record "compile" FAIL "iotrt compile exit $rc: $(tail -n1 "$RUN/logs/compile.log")"; return; }
    # Without cv2 in the root (armhf), the photos as x86 preprocessed them: the engine is compared.
    local inputs=() on=""
    if ! in_root python -c 'import cv2' 2>/dev/null; then
        cp "$RUN/x86/ref.npz" "$RUN/root/root/check/ref.npz"
        inputs=(/root/check/ref.npz) on=" (x86's preprocessed photos: no cv2 here)"
    fi
    in_root python /root/check/probe.py run /root/check/face.iotm /root/check/arm.npz "${inputs[@]}" \
        >> "$RUN/logs/compile.log" 2>&1 || { record "compile" FAIL "running the artifact: $(tail -n1 "$RUN/logs/compile.log")"; return; }
    err=$(probe_host compare "$RUN/x86/ref.npz" "$RUN/root/root/check/arm.npz")
    cmp -s "$RUN/x86/face.iotm" "$RUN/root/root/check/face.iotm" && same="byte-identical" || same="bytes differ"
    # The x86 artifact on the device too: one artifact runs anywhere numpy runs, and it carries
    # the ONNX payload the opencv backend needs (the device has no `onnx` to embed one).
    cp "$RUN/x86/face.iotm" "$RUN/root/root/check/x86.iotm"
    in_root python /root/check/probe.py run /root/check/x86.iotm /root/check/arm-x86art.npz "${inputs[@]}" \
        >> "$RUN/logs/compile.log" 2>&1 || { record "compile" FAIL "running the x86 artifact: $(tail -n1 "$RUN/logs/compile.log")"; return; }
    err2=$(probe_host compare "$RUN/x86/ref.npz" "$RUN/root/root/check/arm-x86art.npz")
    local detail
    detail=$("$HOST_PY" -c '
import json, sys
own, x86 = json.loads(sys.argv[1]), json.loads(sys.argv[2])
arch, same, secs, on = sys.argv[3:]
worst = max(v for e in (own, x86) for k, v in e.items() if k.endswith("_scaled"))
def show(e):
    return ", ".join("{} {:.2g} ({:.2g} scaled)".format(k, v, e[k + "_scaled"])
                     for k, v in e.items() if k + "_scaled" in e)

mine, theirs, scale = show(own), show(x86), own["scale"]
inputs = max(own["input"], x86["input"])
print(worst)
print(f"max |{arch} - x86| on the photos: artifact compiled here: {mine}; x86 artifact here: "
      f"{theirs}; limit 1e-4 x max(1, |value|), outputs up to {scale:.0f}; inputs differ by "
      f"{inputs:.2g}{on}; artifacts {same}; compiled in {secs}s")

' "$err" "$err2" "$ARCH" "$same" "$COMPILE_S" "$on")
    ARTIFACT_ERR=$(echo "$detail" | head -n1)
    detail=$(echo "$detail" | tail -n1)
    if awk -v e="$ARTIFACT_ERR" 'BEGIN { exit !(e <= 1e-4) }'; then record "compile" ok "$detail"
    else record "compile" FAIL "$detail"; fi
}

step_up() {
    local t0 out rc=0 stop_t0 stop_s left
    say "up: the door graph with the sim camera at ${FPS} fps until an unlock and a visitor"
    # The root shares the host's network: a free port for a web node, should the graph have one.
    ROOT_ENV+=(IOTRT_STATE_DIR=/var/lib/iotrt-check IOTRT_RUNTIME_DIR=/run/iotrt-check
               WEB_PORT="$("$HOST_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')")

    t0=$EPOCHREALTIME
    # nice, ionice, chroot and env exec, so $! is the supervisor itself.
    nice -n 19 ionice -c3 chroot "$RUN/root" /usr/bin/env -i \
        PATH=/opt/iotrt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        "${ROOT_ENV[@]}" CAMERA_SOURCE=sim CAMERA_FPS="$FPS" \
        sh -c 'cd /root/iotrt && exec iotrt up configs/door.yaml' > "$RUN/logs/up.log" 2>&1 &
    local pid=$!
    out=$(probe_host wait "$HOST_PY -m iotrt" "$RUN/root/var/lib/iotrt-check" "$t0" "$TIMEOUT" "$pid" 2>&1) || rc=$?
    echo "$out" > "$RUN/logs/wait.json"
    if [ "$rc" = 0 ]; then
        UNLOCK_S=$("$HOST_PY" -c 'import json,sys; print(json.loads(sys.argv[1])["unlock_s"])' "$out")
        record "owner unlocks" ok "$(fmt_wait "$out" unlock)"
        record "visitor announced" ok "$(fmt_wait "$out" visitor)"
    else
        record "owner unlocks" FAIL "$(echo "$out" | tail -n1); log: $(grep -v '^\s*$' "$RUN/logs/up.log" | tail -n1)"
    fi
    # A clean stop: SIGTERM (what systemctl stop sends), exit 0, nothing left in the root.
    stop_t0=$EPOCHREALTIME
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 180))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        record "clean stop" FAIL "the supervisor did not exit within 180 s of SIGTERM"
        return
    fi
    rc=0
    wait "$pid" || rc=$?
    stop_s=$(elapsed "$stop_t0")
    left=$(root_pids "$RUN/root" | wc -l)
    if [ "$rc" = 0 ] && [ "$left" = 0 ]; then record "clean stop" ok "SIGTERM -> exit 0 in ${stop_s}s, no process left"
    else record "clean stop" FAIL "SIGTERM -> exit $rc in ${stop_s}s, $left process(es) left"; fi
}

fmt_wait() {
    "$HOST_PY" -c '
import json, sys
w, what = json.loads(sys.argv[1]), sys.argv[2]
if what == "unlock":
    print("{} s after iotrt up (first node ready at {} s), who={}".format(
        w["unlock_s"], w.get("first_ready_s"), w.get("unlock_who")))
else:
    print("{} s after iotrt up".format(w["visitor_s"]))' "$1" "$2"

}

step_events() {
    local log=$RUN/logs/events.log rc=0 unlock visitor
    in_root iotrt events > "$log" 2>&1 || rc=$?
    unlock=$(grep -c '"action": "unlock"' "$log" || true)
    visitor=$(grep -c '"event": "visitor"' "$log" || true)
    if [ "$rc" = 0 ] && [ "$unlock" -gt 0 ] && [ "$visitor" -gt 0 ]; then
        record "iotrt events" ok "$(wc -l < "$log") events; $unlock with an unlock, $visitor with a visitor"
    else
        record "iotrt events" FAIL "exit $rc; $unlock unlock and $visitor visitor line(s)"
    fi
}

teardown() {         # undo the mounts and the binfmt entry now, so the summary can say so
    local before=${#MOUNTS[@]}
    cleanup_mounts
    record "cleanup" "$([ "$LEFT_MOUNTS" = 0 ] && [ "$LEFT_PROCS" = 0 ] && echo ok || echo FAIL)" \
        "$before mounts undone, $LEFT_MOUNTS left; $LEFT_PROCS stray process(es); binfmt entry $([ -n "$BINFMT_ENTRY" ] && echo removed || echo "was the system's"); $BINFMT_NOTE"

}

print_summary() {
    local r step result detail
    echo
    echo "iotrt on Debian $SUITE $ARCH under qemu-user ($(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+changes'))"
    printf '%-22s %-6s %s\n' STEP RESULT DETAIL
    for r in "${RESULTS[@]}"; do
        IFS='|' read -r step result detail <<< "$r"
        printf '%-22s %-6s %s\n' "$step" "$result" "$detail"
    done
    if [ ${#PACKAGES[@]} -gt 0 ]; then
        echo
        echo "packages in the root's venv (name version how [wheel tag]):"
        printf '  %s\n' "${PACKAGES[@]}"
    fi
    if [ "$ARCH" != arm64 ] && [ ${#INDEX[@]} -gt 0 ]; then
        echo
        echo "the package index for $PIP_ARCH, Python $(python_version) (name, version arm64 gets, $PIP_ARCH wheel or none):"
        printf '  %s\n' "${INDEX[@]}"
    fi
    echo
    echo "figures: base root ${BUILD_S:-reused}${BUILD_S:+ s}; install ${INSTALL_S:--} s;" \
         "artifact max error ${ARTIFACT_ERR:--} (|d| / max(1, |x86 value|)); first unlock ${UNLOCK_S:--} s"

    if [ "$FAILED" = 1 ]; then echo "RESULT: FAIL"
    elif [ ${#SKIPPED[@]} -gt 0 ]; then echo "RESULT: PASS as far as it goes (skipped: $(IFS=,; echo "${SKIPPED[*]}" | sed 's/,/, /g'))"
    else echo "RESULT: PASS"; fi
}

main() {
    parse_args "$@"
    [ -n "$MIRROR" ] || MIRROR=$(host_mirror | head -n1)
    if [ "$PLAN" = 1 ]; then
        claim_cache
        print_plan
        exit 0
    fi
    [ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
    local tool
    for tool in debootstrap chroot flock "qemu-$QARCH-static"; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install debootstrap qemu-user-static)"
    done
    "$HOST_PY" -c 'import iotrt, cv2' 2>/dev/null \
        || die "$HOST_PY cannot import iotrt and cv2 (the x86 reference): give --host-python"
    claim_cache
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    binfmt_setup
    local decision
    decision=$(cache_decision)
    build_base "$decision"
    record "base root" ok "$([ "$decision" = reuse ] && echo "reused $BASE" || echo "built in ${BUILD_S}s: $decision")"
    prepare_run
    step_index
    if [ "$ARCH" = armhf ]; then
        if step_install_apt; then
            step_compile
            local s
            for s in "unit verify" validate "owner unlocks" "visitor announced" "clean stop" "iotrt events"; do
                if [ -n "$MISSING" ]; then record "$s" skip "needs $MISSING (see install)"; fi
            done
            if [ -z "$MISSING" ]; then step_unit; step_validate; step_up; step_events; fi
        fi
    elif step_install || [ -x "$RUN/root/opt/iotrt/venv/bin/iotrt" ]; then
        # Even when install.sh failed late (after pip), the rest shows whatever else is wrong.
        step_unit
        step_validate
        step_compile
        step_up
        step_events
    else
        record "run" FAIL "stopped: iotrt was not installed (log: $CACHE/last-$ARCH-logs/install.log)"
    fi
    teardown
    print_summary | tee "$CACHE/summary-$ARCH.txt"
    [ "$KEEP" = 1 ] && echo "kept: $RUN (logs in $RUN/logs)"
    [ "$FAILED" = 0 ]
}

main "$@"; exit    # on one line: bash has read it all before running it

