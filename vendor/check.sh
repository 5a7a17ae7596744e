#!/usr/bin/env bash
# Check that vendor/candle-core is exactly the crates.io release plus vendor/candle-core.patch
# (vendor/README.md). Needs cargo and the crates.io registry (or the release already in
# cargo's cache); prints the difference and exits 1 when the tree drifted.
#   bash vendor/check.sh            check
#   bash vendor/check.sh --write    regenerate the patch from the vendored tree
set -euo pipefail
cd "$(dirname "$0")"
VERSION=0.11.1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# the release's .crate, through cargo (a throw-away project that depends on it)
mkdir -p "$work/fetch/src"
cat > "$work/fetch/Cargo.toml" <<TOML
[package]
name = "fetch-vendored"
version = "0.0.0"
edition = "2021"
[dependencies]
candle-core = { version = "=$VERSION", default-features = false }
TOML
touch "$work/fetch/src/lib.rs"
cargo fetch -q --manifest-path "$work/fetch/Cargo.toml"
crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/candle-core-$VERSION.crate | head -1)
tar xzf "$crate" -C "$work"
mv "$work/candle-core-$VERSION" "$work/release"
# what the vendored copy leaves out (vendor/README.md): tests, benches, examples, cargo's
# packaging files
rm -rf "$work"/release/{tests,benches,examples,.cargo_vcs_info.json,Cargo.lock,Cargo.toml.orig}

if [ "${1:-}" = "--write" ]; then
    (cd "$work" && cp -r "$OLDPWD/candle-core" vendored && diff -ruN release vendored) \
        > candle-core.patch || true
    echo "wrote vendor/candle-core.patch ($(grep -c '^+++ ' candle-core.patch) files)"
    exit 0
fi
(cd "$work/release" && patch -s -p1 < "$OLDPWD/candle-core.patch")
if diff -r "$work/release" candle-core > "$work/drift"; then
    echo "vendor/candle-core = candle-core $VERSION + vendor/candle-core.patch"
else
    cat "$work/drift"
    echo "vendor/candle-core differs from candle-core $VERSION + vendor/candle-core.patch" >&2
    exit 1
fi
