#!/bin/sh
# Instructions courier executes per delivery, counted by callgrind. Unlike
# the bench's rates, which move by tens of percent with the machine, the
# count moves by up to 5 % between runs (batch sizes and wake-ups depend
# on timing): run each build more than once, and trust only a difference
# larger than that.
#
# Runs throughput-1 on PostgreSQL twice with `courier serve` under
# valgrind's callgrind, with SMALL and LARGE events (one delivery each), and
# divides the difference of the two totals by the difference in deliveries,
# which leaves start-up out. SCENARIO=ingest-1 counts HTTP ingest instead
# (any scenario of one delivery per event).
#
#   crates/bench/instructions.sh [COURIER_BINARY ...]
#
# Each binary (target/release/courier by default) is measured in turn.
# KEEP=DIR keeps the callgrind files there (callgrind_annotate reads them).
# Under valgrind, sha2 cannot use the CPU's SHA extensions, so signing counts
# for far more of the total than it costs natively.
#
# courier runs some 50 times slower under valgrind, so its endpoint would
# look slow by the clock (answers past `delivery.quick_ms`, 250 ms): a sixth
# of throughput-1's deliveries and half of ingest-1's then went through the
# deliveries queue or were held and released by the ledger, which no
# delivery of these scenarios does natively. The runs here set the quick
# time to a minute (QUICK_MS=60000), so the count is of the path a native
# run takes. Builds older than that setting refuse it: QUICK_MS= (empty)
# leaves it out, and their counts include those paths.
set -eu

scenario=${SCENARIO:-throughput-1}
case $scenario in
throughput-1 | ingest-1) ;;
*) echo "SCENARIO must be throughput-1 or ingest-1 (one delivery per event), not '$scenario'" >&2; exit 2 ;;
esac
small=${SMALL:-1000}
large=${LARGE:-6000}
quick_ms=${QUICK_MS-60000}
[ "$large" -gt "$small" ] || { echo "LARGE ($large) must exceed SMALL ($small)" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
[ $# -gt 0 ] || set -- target/release/courier

cargo build --release -q -p courier-bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

total() { # BINARY EVENTS -> callgrind's instruction total for `serve`
    tag=$(basename "$1")-$2
    wrapper="$work/$tag.sh"
    cat >"$wrapper" <<EOF
#!/bin/sh
if [ "\$1" = serve ]; then
    exec valgrind --tool=callgrind --callgrind-out-file=$work/$tag.out "$1" "\$@"
fi
exec "$1" "\$@"
EOF
    chmod +x "$wrapper"
    target/release/courier-bench --courier "$wrapper" --scenario "$scenario" \
        ${quick_ms:+--set COURIER__DELIVERY__QUICK_MS=$quick_ms} --db postgres --no-bare \
        --events "$2" --out "$work/$tag.json" >"$work/$tag.log" 2>&1 ||
        { cat "$work/$tag.log" >&2; exit 1; }
    grep -q '"status": *"ok"' "$work/$tag.json" ||
        { echo "$scenario did not finish with $1:" >&2; cat "$work/$tag.log" >&2; exit 1; }
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work/$tag.out" "$KEEP/"; fi
    sed -n 's/^totals: *//p' "$work/$tag.out"
}

for courier in "$@"; do
    [ -x "$courier" ] || { echo "$courier is not an executable" >&2; exit 2; }
    a=$(total "$courier" "$small")
    b=$(total "$courier" "$large")
    echo "$courier: $(( (b - a) / (large - small) )) instructions per delivery" \
        "($scenario, PostgreSQL, $small and $large events)"
done
