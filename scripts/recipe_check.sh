#!/usr/bin/env bash
# The demo's recipe guard (Makefile): `recipe_check.sh [--no-record] FILE VAR=VALUE...`
# records the variables a runs directory was made with in FILE the first time (not with
# --no-record: a read-only target such as `make eval` never records), and afterwards
# refuses (exit 2, naming them) variables that differ, instead of the finished stages'
# .done markers silently keeping results of the old recipe.
set -euo pipefail
record=1
if [ "${1:-}" = --no-record ]; then record=0; shift; fi
file=$1; shift
if [ ! -f "$file" ]; then
    if [ "$record" = 1 ]; then
        mkdir -p "$(dirname "$file")"
        printf '%s\n' "$@" > "$file.tmp" && mv "$file.tmp" "$file"
    fi
    exit 0
fi
changed=$(printf '%s\n' "$@" | grep -vxF -f "$file" | cut -d= -f1 | tr '\n' ' ' || true)
if [ -n "$changed" ]; then
    echo "error: $(dirname "$file") was made with another recipe; these variables differ: $changed" >&2
    echo "  (recorded in $file) use a fresh RUNS=DIR (and DEMO=DIR when DEMO_PER_CLASS changed)," >&2
    echo "  or remove the old runs with: make clean-runs" >&2
    exit 2
fi
