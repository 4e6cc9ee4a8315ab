#!/usr/bin/env bash
# A newcomer's first look: courier delivering a realistic stream of order and
# shipment events to a receiver on 127.0.0.1 that checks every signature.
# Uses its own ledger (demo.db) and broker prefix (demo), and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/debug
EVENTS=${EVENTS:-25}
SECRET=whsec_ZGVtby1zZWNyZXQtZm9yLWNvdXJpZXItZGVtbw==
export COURIER__DATABASE__URL=sqlite://demo.db
export COURIER__AMQP__PREFIX=demo
export COURIER__DELIVERY__REQUIRE_HTTPS=false
export COURIER__DELIVERY__ALLOW_PRIVATE_NETWORKS=true
export COURIER__LOG__LEVEL=${COURIER__LOG__LEVEL:-warn}

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

$BIN/courier migrate >/dev/null
$BIN/courier workspace create --id demo --name "Demo shop" >/dev/null 2>&1 || true
if [ "$($BIN/courier webhook list --workspace demo)" = "[]" ]; then
    $BIN/courier webhook create --workspace demo --name "demo receiver" \
        --url http://127.0.0.1:9999/hook --secret "$SECRET" \
        --events order.created,order.status_changed,order.canceled,shipment.created,parcel.status_changed,refund.requested \
        >/dev/null
fi

$BIN/courier receive --listen 127.0.0.1:9999 --secret "$SECRET" & pids+=($!)
$BIN/courier serve & pids+=($!)

echo "publishing $EVENTS events; the receiver prints each delivery as it arrives"
$BIN/courier-producer --prefix demo demo --workspace demo --events "$EVENTS" --rate 5 >/dev/null
# Let the last deliveries land before stopping everything.
sleep 3
echo "done: see every attempt with 'sqlite3 demo.db \"select * from attempts\"'"
