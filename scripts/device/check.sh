#!/usr/bin/env bash
# The GPU machine's check, self-contained, under 8 minutes:
#   scripts/device/check.sh OUT.json
# Writes one JSON summary to OUT.json: environment (GPU, driver, CUDA/NVRTC/NCCL versions, the
# host's PyTorch), SmolLM2 logits parity GPU vs the CPU path (bound 1e-3), the GPU training
# pass's log-probs and gradients vs the CPU training pass (bound 1e-3), one GRPO-shaped learner
# step on the GPU (64 rows, forward + backward + AdamW), NCCL all-reduce bandwidth for a
# 135M-float buffer, greedy decode tokens/s. Exits non-zero when a check failed.
#
# Needs: an NVIDIA driver, and the CUDA 13 libraries that PyTorch cu130 wheels bring
# (nvidia/cu13/lib: libnvrtc.so.13, libcublas.so.13; nvidia/nccl/lib: libnccl.so.2) in a Python
# that imports torch (or KAIZEN_CUDA_LIBS=dir1:dir2 naming them). No Rust toolchain: the binary
# is built elsewhere by scripts/device/build.sh (target/device/kaizen-device-check) or named by
# KAIZEN_DEVICE_CHECK. The model is SmolLM2-135M-Instruct from $KAIZEN_CACHE/models when present,
# else random weights of its shape (KAIZEN_DEVICE_MODEL overrides: random|smollm2|PATH).
set -euo pipefail
out="${1:?usage: scripts/device/check.sh OUT.json}"
cd "$(dirname "$0")/../.."
bin="${KAIZEN_DEVICE_CHECK:-target/device/kaizen-device-check}"
[[ -x "$bin" ]] || { echo "check.sh: $bin is missing; build it with scripts/device/build.sh" >&2; exit 2; }
python="${KAIZEN_DEVICE_PYTHON:-python3}"
work=$(mktemp -d -t kaizen-device.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Where the CUDA libraries are: the nvidia/* directories of the Python that has torch.
libs="${KAIZEN_CUDA_LIBS:-}"
if [[ -z "$libs" ]]; then
    libs=$("$python" - <<'PY' 2>/dev/null || true
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()])
try:
    import torch
    roots.add(os.path.dirname(os.path.dirname(torch.__file__)))
except Exception as e:
    print(f"check.sh: torch not importable ({e})", file=sys.stderr)
dirs = sorted({d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "*", "lib"))})
print(":".join(dirs))
PY
)
fi
# cudarc looks for libnccl.so / libnccl.so.<CUDA major>, never libnccl.so.2 (the only name the
# pip package ships): link it under a name it tries.
mkdir -p "$work/lib"
IFS=: read -r -a lib_dirs <<<"$libs"
for d in "${lib_dirs[@]}"; do
    if [[ -e "$d/libnccl.so.2" && ! -e "$work/lib/libnccl.so" ]]; then
        ln -s "$d/libnccl.so.2" "$work/lib/libnccl.so"
    fi
done
export LD_LIBRARY_PATH="$work/lib${libs:+:$libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "check.sh: LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >&2

# The host's own stack, for the record (not needed by the check).
"$python" - >"$work/host.json" <<'PY' 2>/dev/null || echo '{}' >"$work/host.json"
import json, subprocess
host = {}
try:
    host["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=30).stdout.strip()
except Exception as e:
    host["nvidia_smi"] = f"unavailable: {e}"
try:
    import torch
    host["torch"] = torch.__version__
    host["torch_cuda"] = torch.version.cuda
    host["torch_nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None
    host["torch_cuda_available"] = torch.cuda.is_available()
except Exception as e:
    host["torch"] = f"unavailable: {e}"
print(json.dumps(host))
PY

status=0
timeout 420 "$bin" "$out" --model "${KAIZEN_DEVICE_MODEL:-auto}" || status=$?
if [[ ! -s "$out" ]]; then
    echo "{\"ok\": false, \"error\": \"kaizen-device-check exited with status $status and wrote nothing (124: over 420 s)\"}" >"$out"
fi
# Merge the host facts in.
"$python" - "$out" "$work/host.json" <<'PY' || true
import json, sys
out, host = sys.argv[1], sys.argv[2]
summary = json.load(open(out))
summary.setdefault("environment", {})
if isinstance(summary["environment"], dict):
    summary["environment"]["host"] = json.load(open(host))
json.dump(summary, open(out, "w"), indent=2)
PY
echo "check.sh: wrote $out (status $status)" >&2
exit "$status"
