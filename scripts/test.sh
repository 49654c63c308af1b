#!/usr/bin/env bash
# kaizen's test command: formatting, lints, then every test of the workspace.
# It provides what the tests need (Python venvs, servers, model files) itself, so it passes from
# a clean clone on a fresh machine. See README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/venv.sh

step() { printf '\n==> %s\n' "$*" >&2; }

step "system packages for the cluster tests (iproute2; OpenMPI and libclang for the mpi feature)"
# The cluster tests put roles in network namespaces (`ip netns`, as root); the data-parallel
# learner's tests need MPI (OpenMPI) and libclang (the mpi crate's bindgen).
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v mpirun >/dev/null || need+=(openmpi-bin)
command -v mpicc >/dev/null || need+=(libopenmpi-dev)
# libclang.so / libclang-14.so.1, not libclang-cpp.so (a different library bindgen cannot load).
ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so' || need+=(libclang-dev)
if ((${#need[@]})); then
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    command -v apt-get >/dev/null || {
        echo "missing: ${need[*]} (install them with your package manager)" >&2
        exit 1
    }
    "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "SmolLM2-135M-Instruct (GGUF) for the parity tests (kaizen-model: tests/smollm2.rs, export)"
scripts/fetch_model.sh >/dev/null

step "Python for the environment tests (kaizen-envs: remote protocol, TextWorld)"
KAIZEN_TEST_PYTHON=$(command -v python3) || { echo "python3 is needed by the environment tests" >&2; exit 1; }
KAIZEN_TEXTWORLD_PYTHON=$(kaizen_venv textworld textworld==1.7.0)
export KAIZEN_TEST_PYTHON KAIZEN_TEXTWORLD_PYTHON

step "OpenAI's Python client for the serving tests (tests/serve.rs: kaizen serve)"
KAIZEN_OPENAI_PYTHON=$(kaizen_venv openai "openai==3.51.0")
export KAIZEN_OPENAI_PYTHON
# Tests that need a service or venv fail (instead of returning early) when it is missing.
export KAIZEN_REQUIRE_SERVICES=1

step "MLflow server for the tracking tests (kaizen-tracking: REST client, spool, sync)"
source scripts/lib/mlflow.sh
KAIZEN_MLFLOW_PYTHON=$(kaizen_venv mlflow "mlflow==3.17.2")
kaizen_mlflow_dir=$(mktemp -d -t kaizen-mlflow.XXXXXX)
trap 'kaizen_mlflow_stop; rm -rf "$kaizen_mlflow_dir"' EXIT
kaizen_mlflow_start "$KAIZEN_MLFLOW_PYTHON" "$kaizen_mlflow_dir"
KAIZEN_TEST_MLFLOW_URI=$KAIZEN_MLFLOW_URI
export KAIZEN_MLFLOW_PYTHON KAIZEN_TEST_MLFLOW_URI

step "cluster examples: shell syntax (bash -n) and the Kubernetes manifest parsed"
for script in examples/cluster/*.sh examples/cluster/*.sbatch; do bash -n "$script"; done
"$KAIZEN_MLFLOW_PYTHON" - examples/cluster/kubernetes.yaml <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = sorted(d["kind"] for d in docs)
assert kinds == ["Job", "Service", "StatefulSet"], kinds
service = next(d for d in docs if d["kind"] == "Service")
assert service["spec"]["clusterIP"] == "None", "the learner's Service is headless"
PY

step "NVRTC (CUDA 13, from PyPI) for the GPU kernels' compile test (kaizen-gpu: tests/nvrtc.rs; no GPU needed)"
KAIZEN_NVRTC_PYTHON=$(kaizen_venv nvrtc "nvidia-cuda-nvrtc==13.0.88")
nvrtc_lib=$("$KAIZEN_NVRTC_PYTHON" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
[[ -e "$nvrtc_lib/libnvrtc.so.13" ]] || { echo "libnvrtc.so.13 not found in $nvrtc_lib" >&2; exit 1; }

step "cargo test"
# LD_LIBRARY_PATH: cudarc loads NVRTC at run time (only libnvrtc lives in that directory).
LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test --workspace --locked

step "the GPU feature: compile and link kaizen with --features gpu (cudarc; no CUDA needed), device scripts' syntax"
cargo clippy --workspace --features gpu --all-targets --locked -- -D warnings
# Compile and link every target with the feature. All targets, as in `cargo test` above, so the
# libraries' builds are shared and only the kaizen crate itself is rebuilt (~40 s on 2 cores).
cargo test --workspace --features gpu --locked --no-run
for script in scripts/device/*.sh; do bash -n "$script"; done

step "the data-parallel learner over MPI (feature mpi: mpirun -n 1..3; the tiny job as 4 processes)"
cargo clippy --workspace --features mpi --all-targets --locked -- -D warnings
cargo test -p kaizen-cluster --features mpi --locked --test data_parallel
cargo test --features mpi --locked --test cluster two_learner_ranks
