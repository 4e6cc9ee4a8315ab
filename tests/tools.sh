#!/usr/bin/env bash
# Installs the command-line tools the tests need beyond Rust: promtool (and
# prometheus, which the same Debian package ships) for deploy/check.sh.
# Idempotent and quiet: does nothing when promtool is already there.
#
# The Debian package would start a prometheus service on :9090 and leave it
# running; nothing here wants that (tests start their own on a free port),
# so service starts are refused during the install and the service is
# stopped and disabled afterwards in case an init system started it anyway.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: promtool is missing and apt-get is not available; install Prometheus (promtool) by hand" >&2
    exit 1
fi

SUDO=
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi

echo "installing prometheus (for promtool)"

# policy-rc.d exit 101 = "action forbidden": invoke-rc.d and deb-systemd-invoke
# then skip starting the service. Only add it when the machine has none, and
# remove only the one this script added.
POLICY=/usr/sbin/policy-rc.d
added_policy=false
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    added_policy=true
fi
remove_policy() {
    if [ "$added_policy" = true ]; then
        $SUDO rm -f "$POLICY"
    fi
}
trap remove_policy EXIT

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
# --no-install-recommends: the package recommends prometheus-node-exporter,
# another service we do not want.
if ! { $SUDO apt-get update -qq && \
       $SUDO apt-get install -y -qq --no-install-recommends prometheus; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "error: apt-get install prometheus failed" >&2
    exit 1
fi
rm -f "$log"

# Belt and braces: if an init system started the packaged service anyway,
# stop it and keep it from starting at boot.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    $SUDO service prometheus stop >/dev/null 2>&1 || true
    if command -v update-rc.d >/dev/null 2>&1; then
        $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
fi

command -v promtool >/dev/null 2>&1 || { echo "error: promtool still missing after install" >&2; exit 1; }
echo "promtool: $(promtool --version 2>&1 | head -n1)"
