#!/usr/bin/env bash
# Installs the command-line tools the tests need beyond Rust:
# - promtool (and prometheus, which the same Debian package ships) for
#   deploy/check.sh and the dashboard tests;
# - chromium and chromedriver (Debian's chromium and chromium-driver) for the
#   browser tests of the web console (tests/support/browser.rs);
# - for the OpenAPI document's tests and `make clients`: a Python virtualenv
#   at target/tools/venv with what clients/requirements.txt pins
#   (openapi-spec-validator, schemathesis, openapi-python-client), and the
#   npm packages of clients/package-lock.json (openapi-typescript,
#   openapi-fetch, typescript) under target/tools/node. Each is installed
#   again only when its pin file changed (the copy next to the install says
#   what it holds), from PyPI and the npm registry.
# Idempotent and quiet: does nothing when every tool is already there, and
# otherwise installs only the missing packages, in one apt-get run.
#
# The prometheus package would start a service on :9090 and leave it
# running; nothing here wants that (tests start their own on a free port),
# so service starts are refused during the install and the service is
# stopped and disabled afterwards in case an init system started it anyway.
set -euo pipefail

packages=()
if ! command -v promtool >/dev/null 2>&1; then
    packages+=(prometheus)
fi
# Absolute paths: browser.rs runs exactly these, not whatever PATH finds.
if [ ! -x /usr/bin/chromium ]; then
    packages+=(chromium)
fi
if [ ! -x /usr/bin/chromedriver ]; then
    packages+=(chromium-driver)
fi
# Debian's python3 makes virtualenvs only with python3-venv (ensurepip).
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    packages+=(python3-venv)
fi
if ! command -v npm >/dev/null 2>&1; then
    packages+=(nodejs npm)
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=$ROOT/target/tools

# The OpenAPI tools, each when its pin file differs from the copy kept with
# the install (or the install is gone). Runs after apt-get, which may have
# brought python3-venv or npm.
openapi_tools() {
    local venv=$TOOLS/venv node=$TOOLS/node log
    if ! cmp -s "$ROOT/clients/requirements.txt" "$venv/requirements.txt" \
        || ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
        echo "installing the OpenAPI tools for Python into target/tools/venv"
        rm -rf "$venv"
        log=$(mktemp)
        if ! { python3 -m venv "$venv" && \
               "$venv/bin/pip" install -q --disable-pip-version-check \
                   -r "$ROOT/clients/requirements.txt"; } >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            rm -rf "$venv"
            echo "error: installing clients/requirements.txt into target/tools/venv failed" >&2
            exit 1
        fi
        rm -f "$log"
        cp "$ROOT/clients/requirements.txt" "$venv/requirements.txt"
    fi
    if ! cmp -s "$ROOT/clients/package-lock.json" "$node/package-lock.json" \
        || [ ! -d "$node/node_modules" ]; then
        echo "installing the OpenAPI tools for TypeScript into target/tools/node"
        rm -rf "$node"
        mkdir -p "$node"
        cp "$ROOT/clients/package.json" "$ROOT/clients/package-lock.json" "$node/"
        log=$(mktemp)
        if ! npm ci --prefix "$node" --no-audit --no-fund --ignore-scripts >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            rm -rf "$node"
            echo "error: npm ci of clients/package-lock.json into target/tools/node failed" >&2
            exit 1
        fi
        rm -f "$log"
    fi
}

if [ ${#packages[@]} -eq 0 ]; then
    openapi_tools
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: ${packages[*]} missing and apt-get is not available; install them by hand" >&2
    exit 1
fi

SUDO=
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi

echo "installing ${packages[*]}"

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
# --no-install-recommends: prometheus recommends prometheus-node-exporter,
# another service we do not want, and chromium recommends fonts, upower and
# the like that a headless test browser does without.
if ! { $SUDO apt-get update -qq && \
       $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "error: apt-get install ${packages[*]} failed" >&2
    exit 1
fi
rm -f "$log"

if [[ " ${packages[*]} " == *" prometheus "* ]]; then
    # Belt and braces: if an init system started the packaged service
    # anyway, stop it and keep it from starting at boot.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        $SUDO service prometheus stop >/dev/null 2>&1 || true
        if command -v update-rc.d >/dev/null 2>&1; then
            $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
        fi
    fi
fi

command -v promtool >/dev/null 2>&1 || { echo "error: promtool still missing after install" >&2; exit 1; }
for tool in /usr/bin/chromium /usr/bin/chromedriver; do
    [ -x "$tool" ] || { echo "error: $tool still missing after install" >&2; exit 1; }
done
openapi_tools
echo "promtool: $(promtool --version 2>&1 | head -n1)"
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
echo "chromedriver: $(/usr/bin/chromedriver --version 2>&1 | head -n1)"
