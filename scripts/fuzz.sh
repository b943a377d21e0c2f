#!/usr/bin/env bash
# Fuzz the extension's calls (fuzz/fuzz_targets/extension_calls.rs) for
# $1 seconds, growing the checked-in corpus. Installs what it needs.
set -euo pipefail
seconds="${1:-1800}"
cd "$(dirname "$0")/.."

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# The target loads the cached default model; fetch it if needed.
cargo run --release --quiet -p wasi-nn-llm-host -- fetch smollm2 >/dev/null

mkdir -p fuzz/corpus/extension_calls
# No sanitizer: llama.cpp is C++ built by cmake, outside the instrumented
# Rust code; the target's own assertions are the oracle. -rss_limit_mb: the
# model and its KV caches live for the whole run.
# The x86_64 target-cpu=native of .cargo/config.toml does not reach here
# (cargo fuzz sets its own RUSTFLAGS), so ask for it.
RUSTFLAGS="-C target-cpu=native" cargo +nightly fuzz run --release --sanitizer none extension_calls \
    fuzz/corpus/extension_calls -- \
    -max_total_time="$seconds" -timeout=60 -rss_limit_mb=8192 -max_len=4096 -print_final_stats=1
