#!/usr/bin/env bash
# Builds the device check for a GPU machine that has no Rust toolchain:
#   scripts/device/build.sh            -> target/device/kaizen-device-check (stripped, release)
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
ls -l target/device/kaizen-device-check
