#!/usr/bin/env bash
# kaizen export smollm2 -> transformers loads it -> same greedy tokens as kaizen (fixture).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/reference/venv.sh
scripts/fetch_model.sh >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cargo run --release --quiet -- export smollm2 --out "$out/smollm2-hf"
"$REF_PY" scripts/reference/export_roundtrip.py "$out/smollm2-hf" tests/fixtures/smollm2_parity.json
