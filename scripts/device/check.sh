#!/usr/bin/env bash
# The GPU machine's check, self-contained, under 8 minutes:
#   scripts/device/check.sh OUT.json
# Writes one JSON summary to OUT.json: environment (GPU, driver, CUDA/NVRTC/NCCL versions, the
# host's PyTorch), SmolLM2 logits parity GPU vs the CPU path (bound 1e-3), the GPU training
# pass's log-probs and gradients vs the CPU training pass (bound 1e-3), one GRPO-shaped learner
# step on the GPU (64 rows, forward + backward + AdamW), batched sampling tokens/s at batch 1, 16
# and 64 (with the behaviour log-probs against the CPU path's), NCCL all-reduce bandwidth for a
# 135M-float buffer and the learner's gradient all-reduce in 25 MiB buckets packed on the device
# (one rank: every value must come back unchanged), greedy decode tokens/s, the actors' decode
# engine on the GPU ("actors": 8 prompts x 8 episodes, 2 turns of 64 tokens, the second turn a
# correction request; greedy completions of 2 groups equal to the CPU engine's, behaviour
# log-probs of 4 sampled episodes within 1e-3 of the CPU model's, tokens/s and episodes/s; about
# 30 s, cut off at 150 s); the whole system on CUDA ("job": `kaizen train` of the tiny
# self-correction job for 4 RL steps with actors and learner on the GPU, with the actors on the
# GPU and the learner on the CPU — the CPU learner's log-probs of what the GPU sampled within 1e-2
# of the behaviour log-probs —, with the actors on the CPU and the learner on the GPU — its first
# SFT and GRPO steps' loss and gradient norm within 1e-3 of the CPU learner's on the same data —
# and on the CPU; at most 150 s, needs target/device/kaizen); then,
# in the time left of the 8 minutes,
# scripts/device/reference.py (transformers `generate` at the same batches and one TRL GRPO step,
# on the machine's own torch) merged in as "reference", with kaizen/torch ratios under
# "side_by_side". Exits non-zero when a check failed (the reference never fails the check).
#
# Needs: an NVIDIA driver, and the CUDA 13 libraries that PyTorch cu130 wheels bring
# (nvidia/cu13/lib: libnvrtc.so.13, libcublas.so.13; nvidia/nccl/lib: libnccl.so.2) in a Python
# that imports torch (or KAIZEN_CUDA_LIBS=dir1:dir2 naming them). No Rust toolchain: the binaries
# are built elsewhere by scripts/device/build.sh (target/device/kaizen-device-check and
# target/device/kaizen, the CLI with `--features gpu`) or named by KAIZEN_DEVICE_CHECK and
# KAIZEN_DEVICE_KAIZEN. The model is SmolLM2-135M-Instruct from $KAIZEN_CACHE/models when present,
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
started=$SECONDS
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

# The whole system on CUDA: the tiny self-correction job (configs/self_correct_tiny.toml: SFT warm
# start, GRPO, evaluations; byte-level tokenizer, random init, nothing to download) through the
# `kaizen` binary built with `--features gpu`, 4 RL steps, four ways: actors and learner on the
# GPU; actors on the GPU and the learner on the CPU (the learner then scores on the CPU what the
# GPU sampled: `logprob_gap_max` is the sampler's behaviour log-probs against the CPU model's, in
# a real job); actors on the CPU and the learner on the GPU, against both on the CPU (same seed:
# the first SFT step trains both learners on the same demonstrations, and the first GRPO step on
# the same episodes when both learners' warm starts sampled alike, so their loss and gradient
# norm must agree: the GPU learner's step against the CPU learner's). At most 150 s together,
# merged in as "job".
kaizen="${KAIZEN_DEVICE_KAIZEN:-target/device/kaizen}"
job_started=$SECONDS
job_budget=$((465 - (SECONDS - started) - 60))
((job_budget > 150)) && job_budget=150
mkdir -p "$work/job"
if [[ -x "$kaizen" ]]; then
    for variant in cuda-cuda cuda-cpu cpu-cuda cpu-cpu; do
        actors_device=${variant%-*} learner_device=${variant#*-}
        job_left=$((job_budget - (SECONDS - job_started)))
        if ((job_left < 10)); then
            echo "out of time (budget $job_budget s)" >"$work/job/$variant.log"
            echo 124 >"$work/job/$variant.status"
            continue
        fi
        job_status=0
        timeout "$job_left" "$kaizen" train configs/self_correct_tiny.toml --no-progress \
            --set run.max_steps=4 --set sft.steps=50 --set eval.num_problems=32 \
            --set "actors.device=\"$actors_device\"" --set "learner.device=\"$learner_device\"" \
            --set "tracking.runs_dir=\"$work/job/$variant\"" \
            >"$work/job/$variant.log" 2>&1 || job_status=$?
        echo "$job_status" >"$work/job/$variant.status"
    done
else
    echo "check.sh: $kaizen is missing (scripts/device/build.sh builds it); no end-to-end job" >&2
fi
"$python" - "$out" "$work/job" "$kaizen" <<'PY' || status=1
import glob, json, math, os, sys
out, root, binary = sys.argv[1:4]
summary = json.load(open(out))
job = {"config": "configs/self_correct_tiny.toml, 4 RL steps, sft.steps = 50",
       "logprob_gap_bound": 1e-2}
if not os.path.exists(binary):
    job["error"] = f"{binary} is missing: scripts/device/build.sh builds it"
variants = ("cuda-cuda", "cuda-cpu", "cpu-cuda", "cpu-cpu")
series = {}
for variant in variants:
    status_path = os.path.join(root, variant + ".status")
    if not os.path.exists(status_path):
        continue
    entry = {"exit_status": int(open(status_path).read().strip() or -1)}
    metrics = {}
    for path in glob.glob(os.path.join(root, variant, "*", "*", "metrics.jsonl")):
        for line in open(path):
            m = json.loads(line)
            metrics.setdefault(m["key"], []).append(m["value"])
    series[variant] = metrics
    for key in ("time/generation", "time/learning", "reward/mean", "loss", "logprob_gap_max",
                "actor_tokens_per_s", "learner_tokens_per_s", "episodes/faulted"):
        if key in metrics:
            entry[key] = metrics[key]
    for key in ("eval/self_correct/correct@t1", "eval/self_correct/correct@t2"):
        if key in metrics:
            entry[key + " (before RL, after)"] = [metrics[key][0], metrics[key][-1]]
    finite = all(math.isfinite(v) for k in ("loss", "reward/mean") for v in metrics.get(k, [math.nan]))
    entry["ok"] = entry["exit_status"] == 0 and finite and len(metrics.get("loss", [])) == 4
    if not entry["ok"]:
        log = open(os.path.join(root, variant + ".log"), errors="replace").read()
        entry["log"] = log if len(log) <= 3000 else log[:1500] + "\n[...]\n" + log[-1500:]
    job[variant] = entry
gap = max(job.get("cuda-cpu", {}).get("logprob_gap_max", [math.inf]))
job["cuda_sampler_vs_cpu_learner_gap_ok"] = gap <= job["logprob_gap_bound"]
# The GPU learner's steps against the CPU learner's on the same data (rel. bound 1e-3).
def rel(a, b):  # relative, absolute below 1 (a GRPO loss can be ~1e-4)
    return abs(a - b) / max(abs(b), 1.0)
gpu_l, cpu_l = series.get("cpu-cuda", {}), series.get("cpu-cpu", {})
learner = {"bound": 1e-3, "note": "differences relative above 1, absolute below"}
for key in ("sft/loss", "sft/grad_norm"):
    if gpu_l.get(key) and cpu_l.get(key):
        learner[key + " (first step: gpu, cpu, rel)"] = [gpu_l[key][0], cpu_l[key][0], rel(gpu_l[key][0], cpu_l[key][0])]
same_episodes = all(gpu_l.get(k, [None])[0] == cpu_l.get(k, [None])[0] is not None
                    for k in ("num_tokens", "reward/mean"))
learner["first_grpo_step_same_episodes"] = same_episodes
if same_episodes:
    for key in ("loss", "grad_norm"):
        if gpu_l.get(key) and cpu_l.get(key):
            learner[key + " (first GRPO step: gpu, cpu, rel)"] = [gpu_l[key][0], cpu_l[key][0], rel(gpu_l[key][0], cpu_l[key][0])]
checked = [v[2] for k, v in learner.items() if isinstance(v, list)]
learner["ok"] = bool(checked) and all(r <= learner["bound"] for r in checked)
job["gpu_learner_vs_cpu_learner"] = learner
job["ok"] = all(job.get(v, {}).get("ok", False) for v in variants) \
    and job["cuda_sampler_vs_cpu_learner_gap_ok"] and learner["ok"]
summary["job"] = job
summary["ok"] = bool(summary.get("ok")) and job["ok"]
json.dump(summary, open(out, "w"), indent=2)
sys.exit(0 if job["ok"] else 1)
PY

# PyTorch side by side, in what is left of 8 minutes (465 s, leaving time for the merges).
left=$((465 - (SECONDS - started)))
reference_model=random
case "${KAIZEN_DEVICE_MODEL:-auto}" in
    *.gguf) reference_model="$KAIZEN_DEVICE_MODEL" ;;
    auto|smollm2)
        gguf="${KAIZEN_CACHE:-$HOME/.cache/kaizen}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        [[ -f "$gguf" ]] && reference_model="$gguf" ;;
esac
if ((left >= 30)); then
    timeout "$left" "$python" scripts/device/reference.py "$work/reference.json" --model "$reference_model" \
        || echo "check.sh: reference.py exited with status $? (124: over its $left s)" >&2
fi
[[ -s "$work/reference.json" ]] \
    || echo "{\"error\": \"reference.py wrote nothing (budget $left s)\"}" >"$work/reference.json"
"$python" - "$out" "$work/reference.json" <<'PY' || true
import json, sys
out, ref_path = sys.argv[1], sys.argv[2]
summary, ref = json.load(open(out)), json.load(open(ref_path))
summary["reference"] = ref
side = {"ratios_are": "kaizen / torch: throughput ratio, > 1 means kaizen is faster"}
try:
    ours = {b["batch"]: b for b in summary.get("generation", {}).get("batches", [])}
    theirs = {b["batch"]: b for b in ref.get("generation", {}).get("batches", [])}
    side["generation_tokens_per_s"] = {
        str(n): {"kaizen": ours[n]["tokens_per_s"], "torch": theirs[n]["tokens_per_s"],
                 "ratio": ours[n]["tokens_per_s"] / theirs[n]["tokens_per_s"]}
        for n in sorted(set(ours) & set(theirs))}
    trl, step = ref.get("trl", {}), summary.get("training", {}).get("grpo_step", {})
    if "learning_s" in trl and "step_s" in step:
        # kaizen's GRPO step (forward + backward + AdamW) against TRL's learning part; kaizen's
        # generation of the same 64 rows against TRL's generation part.
        side["grpo_learning_s"] = {"kaizen": step["step_s"], "trl": trl["learning_s"],
                                   "ratio": trl["learning_s"] / step["step_s"]}
        if 64 in ours:
            side["grpo_generation_s"] = {"kaizen": ours[64]["seconds"], "trl": trl["generation_s"],
                                         "ratio": trl["generation_s"] / ours[64]["seconds"]}
    else:
        side["trl"] = trl.get("skipped") or trl.get("error") or "no TRL figures"
except Exception as e:  # the side-by-side is informational
    side["error"] = f"{type(e).__name__}: {e}"
summary["side_by_side"] = side
json.dump(summary, open(out, "w"), indent=2)
PY
echo "check.sh: wrote $out (status $status)" >&2
exit "$status"
