#!/bin/sh
# lima-rs boot script. cloud-init's bootcmd runs it as root early on every
# boot, with the seed volume mounted read-only at $1 (see mod.rs).
# It installs our guest agent as a systemd service and keeps Lima 1's home
# path working. It must be safe to run again on every boot.
set -eu

seed=$1
# LIMA_GUEST_HOME, LIMA_GUEST_LEGACY_HOME (written by the host, quoted).
. "$seed/boot.env"

bin=/usr/local/bin/lima-guest-agent
unit=/etc/systemd/system/lima-guest-agent.service

# Copies $1 to $2 with mode $3, by rename so that nothing ever sees half a
# file (the old agent may be running from $2). Says whether it changed.
install_file() {
    if cmp -s "$1" "$2"; then
        return 1
    fi
    mkdir -p "$(dirname "$2")"
    tmp=$(mktemp "$(dirname "$2")/.lima-install.XXXXXX")
    if ! cat "$1" >"$tmp" || ! chmod "$3" "$tmp" || ! mv -f "$tmp" "$2"; then
        rm -f "$tmp"
        echo "lima: cannot install $2" >&2
        exit 1
    fi
    return 0
}

changed=no
if install_file "$seed/lima-guest-agent" "$bin" 0755; then changed=yes; fi
if install_file "$seed/lima-guest-agent.service" "$unit" 0644; then changed=yes; fi

if [ -d /run/systemd/system ]; then
    if [ "$changed" = yes ]; then
        systemctl daemon-reload
    fi
    systemctl is-enabled --quiet lima-guest-agent.service ||
        systemctl enable --quiet lima-guest-agent.service
    # --no-block: we run inside cloud-init's own start job.
    if [ "$changed" = yes ]; then
        systemctl restart --no-block lima-guest-agent.service
    else
        systemctl start --no-block lima-guest-agent.service
    fi
else
    echo "lima: no systemd; start $bin some other way" >&2
fi

# Lima 1 put the home at /home/NAME.linux; keep that path as a link to the
# home. It may dangle until cloud-init creates the user, later this boot.
if [ -n "$LIMA_GUEST_LEGACY_HOME" ] &&
    [ ! -e "$LIMA_GUEST_LEGACY_HOME" ] && [ ! -L "$LIMA_GUEST_LEGACY_HOME" ]; then
    mkdir -p "$(dirname "$LIMA_GUEST_LEGACY_HOME")"
    ln -s "$(basename "$LIMA_GUEST_HOME")" "$LIMA_GUEST_LEGACY_HOME"
fi
