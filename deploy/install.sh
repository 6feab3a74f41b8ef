#!/bin/sh
# Install, upgrade or remove iotrt as a systemd service on a device (Raspberry Pi OS, Debian,
# Ubuntu). Run as root. See docs/deploy.md.
#
#   install.sh install GRAPH [PACKAGE]   install iotrt and run GRAPH as iotrt-NAME.service
#   install.sh upgrade [PACKAGE]         upgrade iotrt, rewrite the units, restart the graphs
#   install.sh uninstall [--purge]       stop and remove the services and iotrt
#                                        (--purge also deletes /etc/iotrt, the state, the user)
#
# PACKAGE is what pip installs: a wheel, a source folder, or "iotrt" (the default).
# GRAPH's whole folder is copied to /etc/iotrt/NAME/, so files it names (rules, models, your
# nodes) come along; edit them there and `systemctl restart iotrt-NAME`.
set -eu

PREFIX=${IOTRT_PREFIX:-/opt/iotrt}
ETC=${IOTRT_ETC:-/etc/iotrt}
USER_NAME=iotrt
GROUPS_WANTED="video gpio dialout i2c"
VENV=$PREFIX/venv
UNIT_DIR=/etc/systemd/system

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }

usage() { sed -n '4,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (sudo $0 $*)"; }

ensure_user() {
    if ! id "$USER_NAME" >/dev/null 2>&1; then
        say "creating system user $USER_NAME"
        useradd --system --home-dir /var/lib/iotrt --no-create-home \
                --shell /usr/sbin/nologin "$USER_NAME"
    fi
    for g in $GROUPS_WANTED; do   # only the device groups this system has
        if getent group "$g" >/dev/null; then usermod -aG "$g" "$USER_NAME"; fi
    done
}

install_package() {
    pkg=${1:-iotrt}
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
    fi
    say "installing $pkg into $VENV"
    "$VENV/bin/pip" install --upgrade "$pkg"
}

graph_name() {
    "$VENV/bin/python" -c 'import sys; from iotrt.graph import load_graph; print(load_graph(sys.argv[1]).name)' "$1"
}

write_unit() {   # write_unit GRAPH_FILE -> prints the unit name
    name=$(graph_name "$1")
    "$VENV/bin/iotrt" unit "$1" --python "$VENV/bin/python" --user "$USER_NAME" \
        -o "$UNIT_DIR/iotrt-$name.service" 2>/dev/null
    echo "iotrt-$name.service"
}

cmd_install() {
    [ $# -ge 1 ] || usage 2
    graph=$1
    [ -f "$graph" ] || die "no graph file '$graph'"
    need_root
    ensure_user
    install_package "${2:-}"
    "$VENV/bin/iotrt" validate "$graph" || die "fix the graph first"
    name=$(graph_name "$graph")
    dest=$ETC/$name
    say "copying $(dirname "$graph") to $dest"
    mkdir -p "$dest"
    cp -R "$(dirname "$graph")/." "$dest/"
    chown -R root:"$USER_NAME" "$ETC"
    chmod -R u=rwX,g=rX,o= "$ETC"
    installed=$dest/$(basename "$graph")
    runuser -u "$USER_NAME" -- "$VENV/bin/iotrt" validate "$installed" \
        || die "the service user cannot use $installed (see above)"
    unit=$(write_unit "$installed")
    systemctl daemon-reload
    systemctl enable --now "$unit"
    say "running: systemctl status $unit; journalctl -u $unit -f;" \
        "sudo -u $USER_NAME $VENV/bin/iotrt ps $name"
}

cmd_upgrade() {
    need_root
    install_package "${1:-}"
    for graph in "$ETC"/*/*.yaml; do
        [ -f "$graph" ] || continue
        # only files that are graphs (a rules file is not): rewrite their units
        if runuser -u "$USER_NAME" -- "$VENV/bin/iotrt" validate "$graph" >/dev/null 2>&1; then
            unit=$(write_unit "$graph")
            systemctl daemon-reload
            say "restarting $unit"
            systemctl restart "$unit"
        fi
    done
}

cmd_uninstall() {
    need_root
    for unit in "$UNIT_DIR"/iotrt-*.service; do
        [ -f "$unit" ] || continue
        say "removing $(basename "$unit")"
        systemctl disable --now "$(basename "$unit")" || true
        rm -f "$unit"
    done
    systemctl daemon-reload
    rm -rf "$PREFIX"
    if [ "${1:-}" = "--purge" ]; then
        say "purging $ETC, /var/lib/iotrt, /run/iotrt and user $USER_NAME"
        rm -rf "$ETC" /var/lib/iotrt /run/iotrt
        userdel "$USER_NAME" 2>/dev/null || true
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
