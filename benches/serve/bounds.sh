#!/bin/bash
# How far to reuse a WASI 0.3 instance: 4 and 16 concurrent streams (128
# tokens each, greedy, the serve section's client) against the WASI 0.2
# server and the WASI 0.3 server at --instance-concurrency 1, 4 and 16, each
# on a fresh server, in turn, three rounds. Prints one line per measurement:
# round, server, setting, streams, aggregate tok/s. Needs the guests and the
# host built (`make test` or `make bench` builds them) and target/py.
cd "$(dirname "$0")/../.."
pidfile=$(mktemp)
M=smollm2=$HOME/.cache/wasi-nn-llm/models/SmolLM2-135M-Instruct.Q4_1.gguf
G=target/wasm32-wasip2/release
start() { # port args...
  port=$1; shift
  target/release/wasi-nn-llm serve --addr 127.0.0.1:$port --threads 2 --ctx-size 2048 --flash-attn off --model $M "$@" 2>/dev/null &
  echo $! > "$pidfile"
  for i in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$port/health && return; sleep 0.2; done
}
for rep in 1 2 3; do
  for cfg in "p2" "p3 1" "p3 4" "p3 16"; do
    set -- $cfg
    if [ $1 = p2 ]; then start 8301 $G/openai-server.wasm; else start 8301 --instance-concurrency $2 $G/openai_server_p3.wasm; fi
    for streams in 4 16; do
      r=$(target/py/bin/python benches/serve/client.py http://127.0.0.1:8301/v1 smollm2 concurrent $streams 128)
      echo "$rep $cfg streams=$streams $(echo $r | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["tok_s"],1))')"
    done
    kill $(cat "$pidfile"); wait $(cat "$pidfile") 2>/dev/null
  done
done
