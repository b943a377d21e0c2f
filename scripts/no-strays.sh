#!/usr/bin/env bash
# After the test suite: fail if any process of this checkout's host binary
# is still running. Every server or guest host a test starts must end with
# the test binary that started it (tests/serve.rs runs its servers under a
# watchdog for that); one left behind keeps hundreds of MB and a port.
# Strays found are listed and stopped, so the next run starts clean.
set -euo pipefail
cd "$(dirname "$0")/.."
host="$(pwd)/target/release/wasi-nn-llm"
strays=()
for exe in /proc/[0-9]*/exe; do
    pid="${exe#/proc/}"; pid="${pid%/exe}"
    if [ "$(readlink "$exe" 2>/dev/null || true)" = "$host" ]; then
        strays+=("$pid")
    fi
done
if [ "${#strays[@]}" -gt 0 ]; then
    echo "no-strays: ${#strays[@]} host process(es) outlived the tests:" >&2
    for pid in "${strays[@]}"; do
        echo "  $pid (parent $(ps -o ppid= -p "$pid" | tr -d ' ')): $(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-200)" >&2
        kill -TERM "$pid" 2>/dev/null || true
    done
    exit 1
fi
echo "no-strays: no host process outlived the tests"
