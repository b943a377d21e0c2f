#!/usr/bin/env bash
# `make cluster`: the shared store (Redis, deploy/redis.conf), N serve hosts
# with one thread each (so N hosts share this machine's cores fairly) and
# the balancer (haproxy, deploy/haproxy.cfg), all on loopback. Prints the
# URL; Ctrl-C stops everything. The hosts share a snapshot key made for the
# cluster (target/cluster/snapshot.key), which the shared tier's entries
# are sealed and tagged with.
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=${HOSTS:-2}
BALANCER=${BALANCER:-127.0.0.1:8080}
REDIS_PORT=${REDIS_PORT:-6380}
FIRST_PORT=${FIRST_PORT:-8081}
GUEST=${GUEST:-target/wasm32-wasip2/release/openai_server_p3.wasm}
MODEL=${MODEL:-smollm2}
dir=target/cluster
mkdir -p "$dir"
if [ ! -f "$dir/snapshot.key" ]; then
    (umask 077 && head -c 32 /dev/urandom > "$dir/snapshot.key")
fi
pids=()
stop() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM
redis-server deploy/redis.conf --port "$REDIS_PORT" > "$dir/redis.log" 2>&1 &
pids+=($!)
env_hosts=()
for i in $(seq 1 "$HOSTS"); do
    port=$((FIRST_PORT + i - 1))
    target/release/wasi-nn-llm serve --addr "127.0.0.1:$port" --threads 1 --model "$MODEL" \
        --snapshot-key "$dir/snapshot.key" --shared-cache "redis://127.0.0.1:$REDIS_PORT/" "$GUEST" \
        > "$dir/host$i.log" 2>&1 &
    pids+=($!)
    env_hosts+=("HOST${i}_ADDR=127.0.0.1:$port")
done
# deploy/haproxy.cfg names two hosts; more get server lines of their own.
config="$dir/haproxy.cfg"
cp deploy/haproxy.cfg "$config"
for i in $(seq 3 "$HOSTS"); do
    echo "    server host$i \"\${HOST${i}_ADDR}\" check" >> "$config"
done
env BALANCER_ADDR="$BALANCER" "${env_hosts[@]}" haproxy -f "$config" > "$dir/haproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
    if curl -sf -o /dev/null "http://$BALANCER/health"; then
        echo "cluster: $HOSTS hosts behind http://$BALANCER/v1 (logs in $dir; Ctrl-C stops)"
        wait
        exit 0
    fi
    sleep 0.5
done
echo "cluster: the balancer did not come up; see $dir/*.log" >&2
exit 1
