# courier: `make run` starts the server on the embedded SQLite ledger,
# `make test` runs every test against the local RabbitMQ and PostgreSQL.

CARGO ?= cargo
# make run and make demo: the quick-building `quick` profile (Cargo.toml);
# make bench and release images: the slower, faster-running `release`.
COURIER := target/quick/courier

.PHONY: run demo test test-unit lint fmt build quick release sweep services tools check-deploy bench bench-instructions screenshots soak

build:
	$(CARGO) build --workspace --bins

quick:
	$(CARGO) build --profile quick -p courier -p courier-producer

release:
	$(CARGO) build --release -p courier -p courier-producer

## Run courier (worker pipeline) on sqlite://courier.db against the local RabbitMQ.
run: quick
	$(COURIER) migrate
	$(COURIER) serve

## Watch order and shipment events reach a local receiver, signed.
demo: quick
	deploy/demo.sh

## Benchmark courier against the bare limit of RabbitMQ + HTTP on this
## machine: a table, and target/bench/report.json. SCENARIO=latency (or a
## comma-separated list) picks scenarios; BENCH_ARGS passes more options
## (see `cargo run --release -p courier-bench -- --help`).
bench: release
	$(CARGO) run --release -p courier-bench -- $(if $(SCENARIO),--scenario $(SCENARIO),) $(BENCH_ARGS)

## Instructions courier executes per delivery (throughput-1, PostgreSQL),
## counted by valgrind's callgrind: up to 5 % between runs, where the
## bench's rates move by tens. COURIERS="a b" compares two builds;
## SCENARIO=ingest-1 counts HTTP ingest.
bench-instructions: release
	SCENARIO=$(or $(SCENARIO),throughput-1) crates/bench/instructions.sh $(COURIERS)

## A million deliveries through a private three-node RabbitMQ cluster and
## a private PostgreSQL, two workers, under faults drawn from a seed
## (workers SIGKILLed, a broker node stopped, PostgreSQL restarted,
## receivers failing, slow, 429, 410); prints exact accounting, writes
## target/soak/report.json, exits 1 on any loss. About 10 minutes; not part
## of `make test`. SOAK_ARGS passes options (`--seed N` repeats a run; see
## `target/release/courier-soak --help`).
soak: services
	$(CARGO) build --release -p courier -p courier-tests --bin courier --bin courier-soak
	target/release/courier-soak $(SOAK_ARGS)

## The console's pictures in docs/screenshots/, taken with headless
## Chromium from a courier with a few webhooks and deliveries.
screenshots: tools
	$(CARGO) run -p courier-tests --bin courier-screenshots

## Every test: deployment files, unit, store on both databases, producer
## CLI, end-to-end.
test: tools check-deploy build sweep
	@if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

## The API clients, generated from the OpenAPI document into
## target/clients: Python (openapi-python-client) and TypeScript
## (openapi-typescript types for openapi-fetch). clients/README.md says
## how to use them; `make test` generates them again and runs their
## examples against a courier.
.PHONY: clients
clients: tools
	clients/generate.sh

## Removes queues and databases that earlier test runs left behind (a test
## run cleans up after itself; this catches runs that were killed).
sweep:
	@tests/sweep.sh

## Checks that RabbitMQ and PostgreSQL answer, starting them when they do not.
services:
	@tests/services.sh

## Installs the tools the tests need beyond Rust (promtool), when missing.
tools:
	@tests/tools.sh

## Prometheus config, alert rules and their unit tests, Grafana dashboard.
check-deploy: tools
	@deploy/check.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
