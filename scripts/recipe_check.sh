#!/usr/bin/env bash
# The demo's recipe guard (Makefile), one recipe per stage:
#   recipe_check.sh record DIR VAR=VALUE...   after a stage finished: DIR/recipe.txt
#   recipe_check.sh check DIR VAR=VALUE...    before any stage runs: refuses (exit 2,
#                                             naming them) variables that differ from
#                                             DIR/recipe.txt; nothing to check if absent
# Without it a changed variable would be ignored: the finished stage's .done marker
# keeps the results of the old recipe. A stage's recipe holds only the variables its
# output depends on (through the stages it reads), so the message names exactly the
# stages to redo.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: recipe_check.sh record|check DIR VAR=VALUE..." >&2
    exit 2
fi
mode=$1 dir=$2
shift 2
file=$dir/recipe.txt
case "$mode" in
record)
    printf '%s\n' "$@" > "$file.tmp" && mv "$file.tmp" "$file"
    ;;
check)
    if [ ! -f "$file" ]; then
        # finished (its .done marker) before stages recorded their recipe: unknown
        if [ -f "$dir/.done" ]; then
            echo "error: $dir was finished without a recorded recipe (an older Makefile): its variables are unknown" >&2
            exit 2
        fi
        exit 0
    fi
    changed=$(printf '%s\n' "$@" | grep -vxF -f "$file" | cut -d= -f1 | tr '\n' ' ' || true)
    if [ -n "$changed" ]; then
        echo "error: $dir was made with another recipe ($file); these variables differ: ${changed% }" >&2
        exit 2
    fi
    ;;
*)
    echo "usage: recipe_check.sh record|check DIR VAR=VALUE..." >&2
    exit 2
    ;;
esac
