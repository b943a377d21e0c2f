#!/usr/bin/env bash
# Check the project's dependency trees (Cargo.lock, fuzz/Cargo.lock) against
# a local copy of the RustSec advisory database, offline: SECURITY.md
# records the last run. Usage: scripts/audit.sh ADVISORY_DB_DIR, a checkout
# of rustsec/advisory-db (a clone of the public repository).
set -euo pipefail
cd "$(dirname "$0")/.."
db="${1:?usage: scripts/audit.sh ADVISORY_DB_DIR (a checkout of rustsec/advisory-db)}"
if [ ! -d "$db/crates" ]; then
    echo "audit: $db is not a checkout of the advisory database (it has no crates/)" >&2
    exit 2
fi

# cargo-audit, pinned, built into target/tools the first time (a few minutes).
CARGO_AUDIT_VERSION=0.22.2
tools=target/tools
if ! "$tools/bin/cargo-audit" --version 2>/dev/null | grep -q " $CARGO_AUDIT_VERSION\$"; then
    echo "audit: building cargo-audit $CARGO_AUDIT_VERSION into $tools" >&2
    cargo install --quiet --locked --root "$tools" "cargo-audit@$CARGO_AUDIT_VERSION"
fi

if git -C "$db" rev-parse HEAD >/dev/null 2>&1; then
    echo "advisory database: $(git -C "$db" log -1 --format='%H, committed %cd' --date=short)"
fi
echo "advisories: $(find "$db/crates" -name 'RUSTSEC-*.md' | wc -l) (crates/)"
status=0
for lock in Cargo.lock fuzz/Cargo.lock; do
    echo "== $lock"
    # --stale: the copy is as old as it is; the date above says how old.
    "$tools/bin/cargo-audit" audit --db "$db" --no-fetch --stale --file "$lock" || status=1
done
exit $status
