#!/usr/bin/env bash
# Build the host with llama.cpp's CUDA backend (`make cuda`), on a machine
# with neither a GPU nor a CUDA install.
#
# The toolkit is CUDA 13.0 from the Python package registry's NVIDIA wheels
# (nvcc, cicc, the runtime, cuBLAS, CCCL), the version of the lent H200's
# driver, laid out in one prefix under target/cuda-toolkit. ggml-cuda is
# compiled for sm_90 only (H100/H200; CUDA_ARCHS overrides): each further
# architecture multiplies its compile time on 2 cores. The CPU code is built
# for x86-64-v3 (AVX2), not this machine's CPU, so the binary runs on the
# GPU machine's CPU too.
#
# Output: target/cuda/release/wasi-nn-llm beside llama.cpp's shared
# libraries, which it finds through its rpath ($ORIGIN), as it finds the
# toolkit's CUDA runtime and cuBLAS (or LD_LIBRARY_PATH, elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLKIT_VERSION=13.0.3.0
archs=${CUDA_ARCHS:-90}
prefix=target/cuda-toolkit
root=$prefix/nvidia/cu13

if [ ! -e "$prefix/.installed-$TOOLKIT_VERSION" ]; then
    echo "cuda: installing the CUDA $TOOLKIT_VERSION toolkit wheels into $prefix (about 1.1 GB)" >&2
    rm -rf "$prefix"
    python3 -m pip install -q --disable-pip-version-check --no-warn-script-location --target "$prefix" \
        "cuda-toolkit[nvcc,crt,nvvm,cudart,cublas,cccl]==$TOOLKIT_VERSION"
    # The wheels ship only the versioned sonames; the linker looks for the
    # unversioned names. nvcc looks in lib64, the wheels install into lib.
    for lib in cudart cublas cublasLt; do
        ln -sf "lib$lib.so.13" "$root/lib/lib$lib.so"
    done
    ln -sfn lib "$root/lib64"
    touch "$prefix/.installed-$TOOLKIT_VERSION"
fi

toolkit=$PWD/$root
export CUDAToolkit_ROOT=$toolkit
export CUDACXX=$toolkit/bin/nvcc
export CMAKE_CUDA_ARCHITECTURES=$archs
export CARGO_TARGET_DIR=target/cuda
# RUSTFLAGS replaces .cargo/config.toml's target-cpu=native. DT_RPATH (not
# RUNPATH) so that it also finds libggml-cuda.so's own dependencies.
export RUSTFLAGS="-C target-cpu=x86-64-v3 -C link-arg=-Wl,--disable-new-dtags \
-C link-arg=-Wl,-rpath,\$ORIGIN:\$ORIGIN/../../cuda-toolkit/nvidia/cu13/lib"
echo "cuda: building the host for sm_$archs (the first build takes about an hour on 2 cores)" >&2
# The benchmark and its native baseline too, in the same build: one
# llama.cpp for all three (features unify), and what a GPU run carries.
cargo build --release -p wasi-nn-llm-host -p wasi-nn-llm-bench -p wasi-nn-llm-native --features wasi-nn-llm-host/cuda

# llama-cpp-sys-2 links only the unversioned names into target/; the binary
# needs the sonames (libllama.so.0, …): copy the libraries beside it.
out=$(dirname "$(ls -t target/cuda/release/build/llama-cpp-sys-2-*/out/lib/libllama.so.0 | head -n 1)")
cp -fL "$out"/lib*.so.0 target/cuda/release/
# A stripped copy to carry to a GPU machine (the CUDA runtime and cuBLAS are
# not in it: they come from that machine's own wheels, by LD_LIBRARY_PATH).
dist=target/cuda/dist
rm -rf "$dist" && mkdir -p "$dist"
cp target/cuda/release/{wasi-nn-llm,bench,llama-native} target/cuda/release/lib*.so.0 "$dist"/
strip --strip-all "$dist"/*
echo "cuda: built target/cuda/release/wasi-nn-llm (and bench, llama-native); stripped, to carry: $dist ($(du -sh "$dist" | cut -f1))" >&2
