# The two commands of the README, and the steps they share. Both build with
# --release: llama.cpp and Cranelift are far too slow unoptimised, and one
# profile means one build.

GUESTS := target/wasm32-wasip2/release
HOST := cargo run --release --quiet -p wasi-nn-llm-host --
# The inference backend: llama.cpp, or candle (`make chat BACKEND=candle`).
BACKEND ?= llama.cpp

.PHONY: chat serve cluster test bench fuzz cuda gpu-kit bootstrap guests

## Streaming chat on the default model (fetched and cached on first use).
chat: guests
	@$(HOST) run --model smollm2 --backend $(BACKEND) --dir . $(GUESTS)/chat.wasm

## The OpenAI-compatible API on the default model, at http://127.0.0.1:8080/v1:
## the WASI 0.3 service (instances reused),
## or with P2=1 the same API as a WASI 0.2 proxy (an instance per request).
SERVER := $(if $(P2),openai-server.wasm,openai_server_p3.wasm)
serve: guests
	@$(HOST) serve --model smollm2 --backend $(BACKEND) $(GUESTS)/$(SERVER)

## Several hosts sharing one prefix cache behind a balancer, on loopback:
## Redis, HOSTS (default 2) serve hosts of one thread each, and haproxy at
## http://127.0.0.1:8080/v1 (README: Running several hosts).
cluster: guests
	@cargo build --release --quiet -p wasi-nn-llm-host
	@scripts/cluster.sh

## The whole test suite, on the real model.
# The test command's bootstrap also installs the browser test's chromium
# and puppeteer-core (a target variable, so `guests` bootstraps once).
test: BOOTSTRAP_FOR := test
test: guests
	cargo build --release --quiet -p wasi-nn-llm-host
	cargo build --release --quiet -p wasi-nn-stock-host
	cargo test --release
	@scripts/no-strays.sh

bootstrap:
	@scripts/bootstrap.sh $(BOOTSTRAP_FOR)

guests: bootstrap
	@cargo build --release --quiet --target wasm32-wasip2 -p chat -p chat-base -p chat-tensor -p openai-server -p openai-server-p3 -p probe -p compat-0-1-0 -p compat-0-1-1 -p compat-0-1-4 -p p3-probe -p hostile -p conformance -p conformance-p3 -p conformance-nn -p bench-guest -p bench-guest-p3 -p chat-pull -p chat-p3 -p parallel-p3
	@cargo build --release --quiet --target wasm32-wasip1 -p wasmedge-probe

## Regenerate benches/RESULTS.md and its plots (see its header for how
## long; the first run also builds llama-bench and llama-server, about 15
## minutes).
bench: guests
	cargo build --release --quiet -p wasi-nn-llm-native -p wasi-nn-llm-host
	cargo run --release --quiet -p wasi-nn-llm-bench -- --out benches

## Fuzz the extension's calls against the real engine (README: Fuzzing).
FUZZ_SECONDS ?= 1800
fuzz: bootstrap
	@scripts/fuzz.sh $(FUZZ_SECONDS)

## The host with llama.cpp's CUDA backend (sm_90), at target/cuda/release/;
## builds here without a GPU, the CUDA toolkit from the package registry.
cuda: bootstrap
	@scripts/cuda.sh

## What a GPU machine needs to run the benchmark there (benches/gpu/run.sh):
## `make cuda`'s binaries, the benchmark guest and a tokenizer, in
## target/gpu-kit.tar.xz, checked to fit the 64 MiB that travel.
gpu-kit: bootstrap
	@scripts/gpu-kit.sh
