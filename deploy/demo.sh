#!/usr/bin/env bash
# A newcomer's first look: courier delivering a realistic stream of order and
# shipment events to a receiver on 127.0.0.1 that checks every signature.
# Uses the build `make run` made (target/quick), a fresh ledger of its own under
# target/demo/ and its own broker prefix (demo), and stops by itself.
# DEMO_PORT picks the receiver's port (9999).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/quick}
EVENTS=${EVENTS:-25}
PORT=${DEMO_PORT:-9999}
SECRET=whsec_ZGVtby1zZWNyZXQtZm9yLWNvdXJpZXItZGVtbw==
DIR=target/demo
mkdir -p "$DIR"
rm -f "$DIR"/demo.db "$DIR"/demo.db-wal "$DIR"/demo.db-shm
export COURIER__DATABASE__URL=sqlite://$DIR/demo.db
export COURIER__AMQP__PREFIX=demo
export COURIER__DELIVERY__REQUIRE_HTTPS=false
export COURIER__DELIVERY__ALLOW_PRIVATE_NETWORKS=true
# The demo needs no API: any free port for /metrics, so a courier already
# running on 8080 does not stop it.
export COURIER__HTTP__LISTEN=127.0.0.1:0
export COURIER__LOG__LEVEL=${COURIER__LOG__LEVEL:-warn}

fail() { echo "demo: $*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

[ -x "$BIN/courier" ] || fail "$BIN/courier is missing: run 'make release' (or 'make run') first"
port_open "$PORT" && fail "port $PORT is taken; pick another with DEMO_PORT=..."

"$BIN"/courier migrate >/dev/null
"$BIN"/courier workspace create --id demo --name "Demo shop" >/dev/null
"$BIN"/courier webhook create --workspace demo --name "demo receiver" \
    --url "http://127.0.0.1:$PORT/hook" --secret "$SECRET" \
    --events order.created,order.status_changed,order.canceled,shipment.created,parcel.status_changed,refund.requested \
    >/dev/null

"$BIN"/courier receive --listen "127.0.0.1:$PORT" --secret "$SECRET" & receiver=$!
pids+=("$receiver")
"$BIN"/courier serve & server=$!
pids+=("$server")

for _ in $(seq 1 100); do
    port_open "$PORT" && break
    kill -0 "$receiver" 2>/dev/null || fail "the receiver stopped (see its error above)"
    sleep 0.1
done
port_open "$PORT" || fail "the receiver did not start listening on 127.0.0.1:$PORT"

echo "publishing $EVENTS events; the receiver prints each delivery as it arrives"
"$BIN"/courier-producer --prefix demo demo --workspace demo --events "$EVENTS" --rate 5 >/dev/null
# Let the last deliveries land before stopping everything.
sleep 3
kill -0 "$server" 2>/dev/null || fail "courier serve stopped (see its error above); nothing was delivered"
echo "done: see every attempt with 'sqlite3 $DIR/demo.db \"select * from attempts\"'"
