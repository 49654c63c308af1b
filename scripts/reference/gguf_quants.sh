#!/usr/bin/env bash
# Regenerates tests/fixtures/gguf_quants.json with the `gguf` Python package.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/reference/venv.sh
"$REF_PY" scripts/reference/gguf_quants.py tests/fixtures/gguf_quants.json
