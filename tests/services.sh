#!/usr/bin/env bash
# Makes sure the services the tests need are up: RabbitMQ on 127.0.0.1:5672
# and PostgreSQL on 127.0.0.1:5432. Starts them with the machine's own
# commands when they are down, then waits until they answer.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local name=$1 port=$2
    for _ in $(seq 1 120); do
        port_open "$port" && { echo "$name is up on 127.0.0.1:$port"; return 0; }
        sleep 1
    done
    echo "error: $name did not come up on 127.0.0.1:$port" >&2
    return 1
}

if ! port_open 5672; then
    echo "RabbitMQ is down; starting it"
    rabbitmq-server -detached
fi
wait_port RabbitMQ 5672
# The port opens before the broker accepts work; wait for the app to run.
if command -v rabbitmqctl >/dev/null 2>&1; then
    rabbitmqctl await_startup --timeout 120 >/dev/null
fi

if ! port_open 5432; then
    echo "PostgreSQL is down; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
wait_port PostgreSQL 5432
