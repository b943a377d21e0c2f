#!/usr/bin/env bash
# Build one of llama.cpp's own tools (llama-bench, the cross-check of `make
# bench`; llama-server, the anchor of its serve section) from the llama.cpp
# tree vendored in the llama-cpp-python sdist, a registry package: the
# llama-cpp-sys-2 crate ships no tools. Built once into target/ (a build
# artifact, like the project's own llama.cpp); prints the binary's path on
# stdout. About 10 minutes on 2 cores for the first tool, a few for the next.
#
# Usage: scripts/llama-tool.sh llama-bench|llama-server
#
# It is built as the project's own llama.cpp is (GGML_NATIVE, no OpenMP,
# -O2: CMake's RelWithDebInfo), so both run the same kernels. Not -O3 (the
# tree's Release): on a CPU with AMX, GCC 12 at -O3 drops the tile
# configuration's stores before `ldtilecfg` in ggml-cpu/amx/mmq.cpp, and the
# binary dies with SIGILL or SIGSEGV in `tinygemm_kernel_amx`.
set -euo pipefail

tool=${1:?usage: llama-tool.sh llama-bench|llama-server}
case "$tool" in
    llama-bench | llama-server) ;;
    *) echo "llama-tool.sh: $tool is not llama-bench or llama-server" >&2; exit 2 ;;
esac
version=0.3.36
cd "$(dirname "$0")/.."
dir="$PWD/target/llama-cpp-$version"
bin="$dir/build/bin/$tool"
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$dir"
if [ ! -d "$dir/src" ]; then
    echo "$tool: fetching llama-cpp-python==$version (sdist) from the package registry" >&2
    python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$dir/sdist" >&2
    tar xzf "$dir/sdist/llama_cpp_python-$version.tar.gz" -C "$dir"
    mv "$dir/llama_cpp_python-$version/vendor/llama.cpp" "$dir/src"
    rm -rf "$dir/llama_cpp_python-$version" "$dir/sdist"
fi

flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_TOOLS=ON)
echo "$tool: building llama.cpp from llama-cpp-python $version (about 10 minutes on 2 cores the first time)" >&2
cmake -S "$dir/src" -B "$dir/build" "${flags[@]}" >"$dir/cmake.log" 2>&1 || { tail -20 "$dir/cmake.log" >&2; exit 1; }
cmake --build "$dir/build" --target "$tool" -j "$(nproc)" >"$dir/build-$tool.log" 2>&1 || { tail -20 "$dir/build-$tool.log" >&2; exit 1; }
echo "$bin"
