#!/usr/bin/env bash
# Refresh the chat page's two third-party files (examples/openai-server/ui/vendor/)
# from the npm registry: each tarball checked against the registry's own
# sha512 integrity, then the one file the page loads and its licence copied
# byte for byte. Run by hand when bumping a version (then update the
# versions and digests here and in ui/vendor/README.md); the build never
# fetches anything.
set -euo pipefail
cd "$(dirname "$0")/.."
out=examples/openai-server/ui/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# name version integrity file-in-package licence-in-package
fetch() {
    local name=$1 version=$2 integrity=$3 file=$4 licence=$5
    local tarball="$work/$name.tgz"
    curl -sfL "https://registry.npmjs.org/$name/-/$name-$version.tgz" -o "$tarball"
    local digest
    digest="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
    if [ "$digest" != "$integrity" ]; then
        echo "vendor-ui: $name $version does not match its registry integrity" >&2
        exit 1
    fi
    mkdir -p "$work/$name"
    tar xzf "$tarball" -C "$work/$name" --strip-components=1
    cp "$work/$name/$file" "$out/$(basename "$file")"
    cp "$work/$name/$licence" "$out/LICENSE-$name"
    echo "vendor-ui: $name $version -> $out/$(basename "$file")" >&2
}

fetch marked 18.3.0 \
    sha512-ed8zmPXlBb3UfGXN5iHMQyMhFpdqLgoV5umUXx/Q1R+FW3q8VpqpyoKUwlENL9appo2UMvNLURDVaT3AMOryGA== \
    lib/marked.umd.js LICENSE
fetch dompurify 3.5.0 \
    sha512-LYC0ZkE8P1V42JsRYTwMdme/2ET8SpOc5AA2eOFjP/IadvRd2fwiT4TVz5vkfy0XUx12aS2UaRkTnfVPNOv9vw== \
    dist/purify.min.js LICENSE
