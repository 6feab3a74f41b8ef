#!/bin/sh
# Install, upgrade or remove iotrt as a systemd service on a device (Raspberry Pi OS, Debian,
# Ubuntu). Run as root. See docs/deploy.md.
#
#   install.sh install GRAPH [SOURCE]   install iotrt, run GRAPH as iotrt-NAME.service
#   install.sh upgrade [SOURCE]         upgrade iotrt, rewrite the units of the installed
#                                       graphs, restart them
#   install.sh uninstall [--purge]      stop and remove the services and iotrt
#                                       (--purge also deletes /etc/iotrt, the state, the user)
#
# SOURCE is what pip installs iotrt from: a checkout (default: the one this script is in) or a
# wheel, never a name from the package index. [--extras] LIST right after install or upgrade
# adds pip extras: hardware (the GPIO lock, serial and I2C sensors), or e.g. hardware,mqtt.
# GRAPH is copied to /etc/iotrt/NAME/ with the files it names (rules, gallery, node files);
# edit them there and `systemctl restart iotrt-NAME`.
set -eu

PREFIX=${IOTRT_PREFIX:-/opt/iotrt}
ETC=${IOTRT_ETC:-/etc/iotrt}
UNIT_DIR=${IOTRT_UNIT_DIR:-/etc/systemd/system}
USER_NAME=${IOTRT_USER:-iotrt}
GROUPS_WANTED="video gpio dialout i2c"
VENV=$PREFIX/venv
MANIFEST=$PREFIX/graphs          # one line per installed graph: NAME /etc/iotrt/NAME/GRAPH.yaml
HERE=$(cd "$(dirname "$0")" && pwd)
EXTRAS=""

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }

usage() { sed -n '4,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

# Root is needed to create the service user, chown, and talk to systemd; a throwaway install
# for the current user (IOTRT_USER=$(id -un), IOTRT_PREFIX/ETC/UNIT_DIR under a temp folder)
# does not.
need_root() {
    [ "$(id -u)" = 0 ] || [ "$USER_NAME" = "$(id -un)" ] || die "run as root (sudo $0 ...)"
}

# systemd is there to ask only when it runs (not in a chroot, a container build, a test);
# IOTRT_SYSTEMD=0 skips it even then (a throwaway install next to a real one).
have_systemd() {
    [ "${IOTRT_SYSTEMD:-1}" != 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null
}

systemd() {
    if have_systemd; then systemctl "$@"; else say "no systemd running: skipped systemctl $*"; fi
}

as_user() {   # run a command as the service user
    if [ "$USER_NAME" = "$(id -un)" ]; then "$@"; else runuser -u "$USER_NAME" -- "$@"; fi
}

# Every iotrt verb below sees the folders systemd gives the service (the unit's
# StateDirectory= and RuntimeDirectory=), not the caller's defaults: validating then checks the
# socket paths the service will use and creates no folder. (The service user's default state
# folder is under its home, /var/lib/iotrt, which only systemd creates, at the first start.)
export STATE_DIRECTORY=/var/lib/iotrt RUNTIME_DIRECTORY=/run/iotrt
unset IOTRT_STATE_DIR IOTRT_RUNTIME_DIR

validate_as_service() {   # as the service user, who must be able to read it all
    as_user env STATE_DIRECTORY="$STATE_DIRECTORY" RUNTIME_DIRECTORY="$RUNTIME_DIRECTORY" \
        "$VENV/bin/iotrt" validate "$@"
}

ensure_user() {
    if ! id "$USER_NAME" >/dev/null 2>&1; then
        say "creating system user $USER_NAME"
        useradd --system --home-dir /var/lib/iotrt --no-create-home \
                --shell /usr/sbin/nologin "$USER_NAME"
    fi
    [ "$USER_NAME" != "$(id -un)" ] || return 0      # a throwaway install as ourselves
    for g in $GROUPS_WANTED; do   # only the device groups this system has
        if getent group "$g" >/dev/null; then usermod -aG "$g" "$USER_NAME"; fi
    done
}

# The source pip installs: the given one, else the checkout this script is in. Never a bare
# name: that would fetch whatever package of that name the index has.
source_of() {
    src=${1:-}
    if [ -z "$src" ]; then
        src=$(dirname "$HERE")
        [ -f "$src/pyproject.toml" ] || die "$HERE is not in an iotrt checkout: give SOURCE (a checkout or a wheel)"
    fi
    case "$src" in
        *.whl) [ -f "$src" ] || die "no wheel '$src'" ;;
        *) [ -f "$src/pyproject.toml" ] || die "'$src' is neither an iotrt checkout (no pyproject.toml) nor a wheel" ;;
    esac
    (cd "$(dirname "$src")" && echo "$(pwd)/$(basename "$src")")
}

install_package() {
    src=$(source_of "${1:-}")
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        mkdir -p "$PREFIX"
        python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
    fi
    target=$src
    [ -z "$EXTRAS" ] || target="$src[$EXTRAS]"
    say "installing $target into $VENV"
    "$VENV/bin/pip" install --upgrade "$target"
    # pip writes plain bytecode; graphs with `optimize: 2` (the shipped ones) run their nodes as
    # python -OO, which needs its own. The service user cannot write it into $VENV later, and
    # without it every node would compile its modules at each start (slower, ~1.5 MB more).
    say "compiling optimized bytecode (python -OO) in $VENV"
    "$VENV/bin/python" -OO -m compileall -q -j 0 "$VENV/lib" >/dev/null \
        || say "some files in $VENV could not be compiled ahead (Python compiles them when used)"
}

graph_name() {
    "$VENV/bin/python" -c 'import sys; from iotrt.graph import load_graph; print(load_graph(sys.argv[1]).name)' "$1"
}

write_unit() {   # write_unit GRAPH_FILE NAME -> prints the unit name
    mkdir -p "$UNIT_DIR"
    "$VENV/bin/iotrt" unit "$1" --python "$VENV/bin/python" --user "$USER_NAME" \
        -o "$UNIT_DIR/iotrt-$2.service" >/dev/null
    echo "iotrt-$2.service"
}

parse_extras() {   # sets EXTRAS and NSHIFT
    NSHIFT=0
    if [ "${1:-}" = "--extras" ]; then
        [ $# -ge 2 ] || die "--extras needs a value, e.g. --extras hardware"
        case "$2" in *[!a-z0-9_,-]*|"") die "--extras '$2': names like hardware or hardware,mqtt" ;; esac
        EXTRAS=$2 NSHIFT=2
    fi
}

cmd_install() {
    parse_extras "$@"; shift "$NSHIFT"
    [ $# -ge 1 ] && [ $# -le 2 ] || usage 2
    graph=$1
    [ -f "$graph" ] || die "no graph file '$graph'"
    need_root
    ensure_user
    install_package "${2:-}"
    "$VENV/bin/iotrt" validate "$graph" || die "fix the graph first"
    name=$(graph_name "$graph")
    files=$("$VENV/bin/python" -m iotrt.deploy.graphfiles "$graph") || die "cannot list the files of $graph"
    dest=$ETC/$name
    say "copying $(basename "$graph") and the files it names to $dest"
    mkdir -p "$dest"
    src_dir=$(dirname "$graph")
    echo "$files" | while IFS= read -r f; do
        [ -n "$f" ] || continue
        mkdir -p "$dest/$(dirname "$f")"
        cp "$src_dir/$f" "$dest/$f"
        echo "    $f"
    done
    if [ "$(id -u)" = 0 ]; then
        chown -R root:"$USER_NAME" "$dest"
        chmod -R u=rwX,g=rX,o= "$dest"
    fi
    installed=$dest/$(basename "$graph")
    validate_as_service "$installed" \
        || die "the service user cannot use $installed (see above)"
    unit=$(write_unit "$installed" "$name")
    { grep -v "^$name " "$MANIFEST" 2>/dev/null || true; echo "$name $installed"; } > "$MANIFEST.new"
    mv "$MANIFEST.new" "$MANIFEST"
    say "wrote $UNIT_DIR/$unit"
    systemd daemon-reload
    systemd enable --now "$unit"
    say "running: systemctl status $unit; journalctl -u $unit -f;" \
        "sudo -u $USER_NAME $VENV/bin/iotrt ps -g $name"
}

cmd_upgrade() {
    parse_extras "$@"; shift "$NSHIFT"
    [ $# -le 1 ] || usage 2
    need_root
    [ -x "$VENV/bin/python" ] || die "iotrt is not installed in $PREFIX: use install"
    install_package "${1:-}"
    [ -f "$MANIFEST" ] || { say "no installed graph"; return 0; }
    while read -r name graph; do
        [ -n "$name" ] || continue
        if [ ! -f "$graph" ]; then say "skipping $name: $graph is gone"; continue; fi
        validate_as_service "$graph" >/dev/null </dev/null \
            || { say "skipping $name: $graph does not validate with the new version"; continue; }
        unit=$(write_unit "$graph" "$name" </dev/null)
        say "rewrote $unit"
        systemd daemon-reload </dev/null
        systemd restart "$unit" </dev/null
    done < "$MANIFEST"
}

cmd_uninstall() {
    [ $# -le 1 ] || usage 2
    need_root
    if [ -f "$MANIFEST" ]; then
        units=$(while read -r name graph; do [ -z "$name" ] || echo "iotrt-$name.service"; done < "$MANIFEST")
    else   # installed by an older install.sh, which kept no list
        units=$(cd "$UNIT_DIR" 2>/dev/null && ls iotrt-*.service 2>/dev/null || true)
    fi
    for unit in $units; do
        say "removing $unit"
        systemd disable --now "$unit" || true
        rm -f "$UNIT_DIR/$unit"
    done
    systemd daemon-reload
    rm -rf "$PREFIX"
    if [ "${1:-}" = "--purge" ]; then
        say "purging $ETC, /var/lib/iotrt, /run/iotrt and user $USER_NAME"
        rm -rf "$ETC"
        if [ "$USER_NAME" != "$(id -un)" ]; then
            rm -rf /var/lib/iotrt /run/iotrt
            userdel "$USER_NAME" 2>/dev/null || true
        fi
    else
        say "kept $ETC and /var/lib/iotrt (the journal); --purge removes them"
    fi
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    upgrade) shift; cmd_upgrade "$@" ;;
    uninstall) shift; cmd_uninstall "$@" ;;
    -h|--help|help) usage 0 ;;
    *) usage 2 ;;
esac
