# shellcheck shell=bash
# Cached Python virtual environments for kaizen's scripts and tests.
#
#   source scripts/lib/venv.sh
#   py=$(kaizen_venv mlflow "mlflow==3.17.2")     # prints the venv's python
#
# A venv lives under $KAIZEN_CACHE/venvs/<name>-<hash of its requirements>; it is created once
# and reused while the requirement list stays the same. Progress goes to stderr so callers can
# capture the printed path.

KAIZEN_CACHE="${KAIZEN_CACHE:-$HOME/.cache/kaizen}"
export KAIZEN_CACHE

kaizen_venv() {
    local name="$1"
    shift
    local key
    key=$(printf '%s\n' "$@" | sha256sum | cut -c1-12)
    local dir="$KAIZEN_CACHE/venvs/$name-$key"
    if [[ ! -x "$dir/bin/python" || ! -f "$dir/.complete" ]]; then
        echo "kaizen: creating Python venv $dir ($*)" >&2
        rm -rf "$dir"
        mkdir -p "$KAIZEN_CACHE/venvs"
        python3 -m venv "$dir" >&2
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >&2
        touch "$dir/.complete"
    fi
    echo "$dir/bin/python"
}
