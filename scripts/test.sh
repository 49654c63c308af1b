#!/usr/bin/env bash
# kaizen's test command: formatting, lints, then every test of the workspace.
# It provides what the tests need (Python venvs, servers, model files) itself, so it passes from
# a clean clone on a fresh machine. See README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/venv.sh

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked
