#!/usr/bin/env bash
# `make gpu-kit`: everything a GPU machine with no Rust, no registry and
# 64 MiB of carried files needs to measure the engine there
# (benches/gpu/run.sh), in one compressed file, target/gpu-kit.tar.xz:
#
#   bin/       the benchmark (the host as a library) and llama-native, built
#              by `make cuda` with llama.cpp's CUDA backend, stripped, beside
#              llama.cpp's shared libraries (the CUDA runtime and cuBLAS come
#              from the GPU machine's own wheels)
#   target/    the benchmark guest, where the benchmark looks for it
#   vocab.gguf SmolLM2's tokenizer and chat template, no weights
#   gguf-*.whl the `gguf` package, to write the synthetic model there
#   COMMIT     what was built
#
# The model itself is written on the GPU machine (benches/gpu/synthetic.py):
# no real one fits in 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

GGUF_VERSION=0.19.0
# What travels: this file plus the working tree (tracked and untracked files
# git does not ignore).
BUDGET=$((64 * 1024 * 1024))

scripts/cuda.sh
cargo build --release --quiet --target wasm32-wasip2 -p bench-guest

py=target/gguf-py
if [ ! -x "$py/bin/python" ] || ! "$py/bin/python" -c "import gguf" 2>/dev/null; then
    echo "gpu-kit: installing gguf $GGUF_VERSION into $py" >&2
    python3 -m venv "$py"
    "$py/bin/pip" install -q --disable-pip-version-check "gguf==$GGUF_VERSION"
fi

kit=target/gpu-kit
rm -rf "$kit" && mkdir -p "$kit/bin" "$kit/target/wasm32-wasip2/release"
cp target/cuda/dist/{bench,llama-native} target/cuda/dist/lib*.so.0 "$kit/bin/"
cp target/wasm32-wasip2/release/bench-guest.wasm "$kit/target/wasm32-wasip2/release/"
smollm2=$(cargo run --release --quiet -p wasi-nn-llm-host -- fetch smollm2)
"$py/bin/python" benches/gpu/synthetic.py vocab "$smollm2" "$kit/vocab.gguf"
"$py/bin/pip" download -q --disable-pip-version-check --no-deps -d "$kit" "gguf==$GGUF_VERSION"
head=$(git rev-parse --short HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then head="$head (with uncommitted changes)"; fi
echo "$head" > "$kit/COMMIT"

echo "gpu-kit: compressing (about 2 minutes)" >&2
tar -C "$kit" -c . | xz -9 -T0 > target/gpu-kit.tar.xz
kit_bytes=$(stat -c %s target/gpu-kit.tar.xz)
tree_bytes=$( (git ls-files; git ls-files --others --exclude-standard) | sort -u | while read -r f; do
    [ -f "$f" ] && stat -c %s "$f"; done | awk '{s += $1} END {print s + 0}')
total=$((kit_bytes + tree_bytes))
echo "gpu-kit: target/gpu-kit.tar.xz, $((kit_bytes >> 20)) MiB; with the working tree $((total >> 20)) of 64 MiB" >&2
if [ "$total" -gt "$BUDGET" ]; then
    echo "gpu-kit: too big to travel to the GPU machine (64 MiB with the working tree)" >&2
    exit 1
fi
