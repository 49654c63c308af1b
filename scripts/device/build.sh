#!/usr/bin/env bash
# Builds the device check for a GPU machine that has no Rust toolchain:
#   scripts/device/build.sh            -> target/device/kaizen-device-check and target/device/kaizen
#                                         (the CLI with `--features gpu`; both stripped, release)
# The GPU machine gets the repository plus target/device (e.g. the device runner's `carry`),
# then runs scripts/device/check.sh OUT.json. No CUDA is needed here: cudarc loads every CUDA
# library at run time.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kaizen/ci-target}"
# --workspace: the same feature resolution as every other build, so dependencies are reused.
cargo build --release --locked --workspace --bin kaizen-device-check
mkdir -p target/device
cp "$CARGO_TARGET_DIR/release/kaizen-device-check" target/device/kaizen-device-check
strip target/device/kaizen-device-check
# The CLI for check.sh's end-to-end job (only the root crate is rebuilt for the feature; the next
# plain release build rebuilds it back).
cargo build --release --locked --features gpu --bin kaizen
cp "$CARGO_TARGET_DIR/release/kaizen" target/device/kaizen
strip target/device/kaizen
ls -l target/device/
