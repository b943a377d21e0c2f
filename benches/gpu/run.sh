#!/usr/bin/env bash
# The GPU measurement, in one run on a machine with a GPU and no Rust, no
# registry, nothing but what travels: this repository's tree and the kit
# `make gpu-kit` builds (target/gpu-kit.tar.xz). From the repository root:
#
#   benches/gpu/run.sh target/gpu-kit.tar.xz
#
# It writes a llama-shaped GGUF with random weights (benches/gpu/synthetic.py,
# 1.17 B parameters in Q4_K: no real model fits in what travels; speed does
# not depend on the weights' values), then runs the benchmark's single-turn,
# chat, concurrency and restore sections with every layer offloaded, the
# extension beside the out-of-process native baseline (llama-native, the same
# llama.cpp build), into $OUT (target/gpu-out if unset): RESULTS-gpu.md,
# bench.log, nvidia-smi.txt and steps.txt (when each step began).
#
# Settings, from the environment: SHAPE (1b; tiny rehearses on a CPU), RUNS
# (3), CHAT_RUNS (2), GPU_LAYERS (999: all), PYTHON (python3; it needs numpy),
# CUDA_LIBS (where libcudart.so.13 and libcublas.so.13 are; found in
# PYTHON's site-packages if unset: the GPU machine's own NVIDIA wheels).
set -euo pipefail
kit_file=${1:?usage: benches/gpu/run.sh target/gpu-kit.tar.xz}
shape=${SHAPE:-1b}
runs=${RUNS:-3}
chat_runs=${CHAT_RUNS:-2}
layers=${GPU_LAYERS:-999}
python=${PYTHON:-python3}
out=${OUT:-target/gpu-out}
mkdir -p "$out"
: > "$out/steps.txt"
t0=$(date +%s)
step() { echo "[$(($(date +%s) - t0)) s] $*" | tee -a "$out/steps.txt" >&2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step "unpacking $kit_file"
"$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$kit_file" "$work"

step "finding the CUDA runtime and cuBLAS"
if [ -z "${CUDA_LIBS:-}" ]; then
    CUDA_LIBS=$("$python" - <<'EOF'
import os, site
want = {"libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13"}
found = set()
for root in site.getsitepackages():
    for d, _, files in os.walk(os.path.join(root, "nvidia")):
        if want & set(files):
            found.add(d)
print(":".join(sorted(found)))
EOF
)
fi
[ -n "$CUDA_LIBS" ] || { echo "run.sh: no libcudart.so.13 / libcublas.so.13 found; set CUDA_LIBS" >&2; exit 1; }
export LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
(nvidia-smi || echo "nvidia-smi: not here") > "$out/nvidia-smi.txt" 2>&1

step "writing the synthetic model ($shape)"
"$python" -m pip install -q --disable-pip-version-check --no-index --no-deps --target "$work/py" "$work"/gguf-*.whl
models=$work/models
mkdir -p "$models"
model=$models/synthetic-$shape.gguf
PYTHONPATH="$work/py" "$python" benches/gpu/synthetic.py model "$work/vocab.gguf" "$model" --shape "$shape"

step "measuring"
"$work/bin/bench" --models "synthetic-$shape=$model" --gpu-layers "$layers" \
    --only single,chat,concurrency,restore --runs "$runs" --chat-runs "$chat_runs" \
    --target-dir "$work/target" --out "$out" --results RESULTS-gpu.md \
    --command "make gpu-kit here, then benches/gpu/run.sh target/gpu-kit.tar.xz there" \
    --commit "$(cat "$work/COMMIT")" 2>&1 | tee "$out/bench.log"
step "done"
