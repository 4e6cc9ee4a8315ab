#!/usr/bin/env bash
# Deletes RabbitMQ queues and PostgreSQL databases left by test runs that did
# not finish (killed, timed out). Tests use these name prefixes only:
#   queues     ctest-<hex>.*  (e2e)   ptest_<hex>.*  (producer CLI)   atest-<hex>.*  (API)
#   databases  courier_e2e_*  courier_store_*  courier_api_*  courier_bench_*
#   (each a courier_store::scratch::ScratchDb, named courier_<who>_<token>)
#   (bench-<hex>.* queues come from make bench)
# Run before a test run, never during one.
set -uo pipefail

if command -v rabbitmqctl >/dev/null 2>&1; then
    { rabbitmqctl list_queues -q name 2>/dev/null || true; } \
        | { grep -E '^(ctest-|ptest_|atest-|bench-)' || true; } \
        | while read -r queue; do
            rabbitmqctl delete_queue "$queue" >/dev/null 2>&1 || true
        done
fi

if command -v psql >/dev/null 2>&1; then
    psql "${COURIER_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -Atq \
        -c "select datname from pg_database where datname like 'courier\_e2e\_%' or datname like 'courier\_store\_%' or datname like 'courier\_api\_%' or datname like 'courier\_bench\_%'" 2>/dev/null \
        | while read -r db; do
            psql "${COURIER_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -q \
                -c "drop database if exists \"$db\" with (force)" >/dev/null 2>&1 || true
        done
fi
exit 0
