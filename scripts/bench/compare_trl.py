"""Seconds per GRPO step: kaizen's trainer vs TRL's GRPOTrainer, same job, same machine, one run.

The job on both sides: SmolLM2-135M-Instruct (the Q4_1 GGUF de-quantised to f32), 8 prompts x 8
generations per optimizer step, temperature 1, at most --max-new-tokens new tokens, learning rate
--lr (constant), beta = 0 (no reference model), loss "dapo" with epsilon 0.2 / epsilon_high 0.28,
group-scaled advantages, 4 micro-batches of 16 completions, AdamW, grad-norm clip 1, on-policy
(one pass per generation batch). Prompts: the first 8 x --steps problems of
basic_arithmetic_easy/train.jsonl in file order (step k gets problems 8k..8k+7 on both sides),
rendered by the model's chat template as "{question}\\n\\n{instruction}" with the instruction of
configs/self_correct_smollm2.toml; reward 1 when the final answer (last \\boxed{...}, else the
text) ends with the right number.

  kaizen  `kaizen train` on a generated config (self_correct with attempts = 1, sync mode, no
          evaluation); times from the run's metrics.jsonl: wall = time between consecutive
          steps' log records, split into time/generation and time/learning.
  TRL     GRPOTrainer on CPU; wall = on_step_begin -> on_step_end of a callback (generation,
          reward, the 4 forward/backward passes and the optimizer step); generation =
          `_generate_and_score_completions`.

The first step of each side is warm-up; the medians of the rest are reported.
By default kaizen runs the forward/backward pass on every sample as TRL does
(`learner.skip_zero_signal = false`); --skip-zero-signal lets it skip samples whose advantage is
0 (kaizen's default: same update, less work).

Usage: scripts/bench/compare_trl.sh [--steps N] [--max-new-tokens N] [--side kaizen|trl|both]
Prints a table and a JSON summary line.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
NUM_GENERATIONS = 8
PROMPTS_PER_STEP = 8
MICRO_BATCHES = 4
SEED = 7
INSTRUCTION = "Reply with only the final answer, like \\boxed{5}."


def cache_dir():
    return Path(os.environ.get("KAIZEN_CACHE", Path.home() / ".cache" / "kaizen"))


def load_problems(path, count):
    problems = []
    with open(path) as f:
        for line in f:
            if line.strip():
                problems.append(json.loads(line))
            if len(problems) == count:
                break
    if len(problems) < count:
        sys.exit(f"{path}: {len(problems)} problems, need {count} (8 per step)")
    return problems


def toml_str(value):
    return json.dumps(str(value))  # JSON string escapes are valid TOML basic-string escapes


def kaizen_config(args, runs_dir):
    return f"""[run]
experiment = "compare_trl"
seed = {SEED}
mode = "sync"
max_steps = {args.steps}

[model]
source = {toml_str(args.gguf)}

[[env]]
name = "self_correct"
[env.params]
problems = {toml_str(args.problems)}
attempts = 1
instruction = {toml_str(INSTRUCTION)}

[actors]
count = 1
episodes_in_flight = {PROMPTS_PER_STEP * NUM_GENERATIONS}
decode_weights = {toml_str(args.decode_weights)}

[sampling]
temperature = 1.0
max_completion_length = {args.max_new_tokens}

[grpo]
num_generations = {NUM_GENERATIONS}
prompts_per_step = {PROMPTS_PER_STEP}

[loss]
loss_type = "dapo"
epsilon = 0.2
epsilon_high = 0.28
beta = 0.0

[learner]
gradient_accumulation_steps = {MICRO_BATCHES}
max_completion_length = {args.max_new_tokens}
skip_zero_signal = {str(args.skip_zero_signal).lower()}
bf16 = {str(args.bf16).lower()}
share_prompt_prefix = {str(not args.no_share_prompt_prefix).lower()}

[optim]
learning_rate = {args.lr}
lr_scheduler_type = "constant"
warmup_steps = 0
max_grad_norm = 1.0

[eval]
at_start = false
at_end = false
every = 0

[checkpoint]
every = 0
keep = 1

[tracking]
runs_dir = {toml_str(runs_dir)}
"""


def run_kaizen(args, tmp):
    config = Path(tmp) / "kaizen.toml"
    config.write_text(kaizen_config(args, Path(tmp) / "runs"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS=str(THREADS), RAYON_NUM_THREADS=str(THREADS))
    print(f"kaizen: training {args.steps} steps ({config})", file=sys.stderr, flush=True)
    out = subprocess.run([args.kaizen, "train", str(config), "--no-progress"], env=env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    match = re.search(r"^run: (.+)$", out, re.MULTILINE)
    if not match:
        sys.exit(f"kaizen train printed no run directory:\n{out}")
    steps = {}
    with open(Path(match.group(1)) / "metrics.jsonl") as f:
        for line in f:
            m = json.loads(line)
            row = steps.setdefault(m["step"], {})
            row[m["key"]] = m["value"]
            if m["key"] == "time/learning":  # logged once per step, at its end
                row["_timestamp"] = m["timestamp"]
    numbers = sorted(s for s in steps if 1 <= s <= args.steps)
    if numbers != list(range(1, args.steps + 1)):
        sys.exit(f"kaizen metrics.jsonl has steps {numbers}, expected 1..{args.steps}")
    needed = ["time/learning", "time/generation", "response_length", "reward/mean", "zero_signal_samples"]
    for s in numbers:
        missing = [k for k in needed if k not in steps[s]]
        if missing:
            sys.exit(f"kaizen metrics.jsonl: step {s} has no {', '.join(missing)}")
    measured = numbers[1:]
    wall = [(steps[s]["_timestamp"] - steps[s - 1]["_timestamp"]) / 1000 for s in measured]
    pick = lambda key: [steps[s][key] for s in measured]
    return {
        "s_per_step": statistics.median(wall),
        "generation_s": statistics.median(pick("time/generation")),
        "learning_s": statistics.median(pick("time/learning")),
        "tokens_per_step": statistics.median(
            [steps[s]["response_length"] * PROMPTS_PER_STEP * NUM_GENERATIONS for s in measured]),
        "reward": statistics.mean(pick("reward/mean")),
        "zero_signal_samples": statistics.median(pick("zero_signal_samples")),
        "steps": [{"s": w, "generation_s": steps[s]["time/generation"], "learning_s": steps[s]["time/learning"]}
                  for w, s in zip(wall, measured)],
    }


NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


def final_number(text):
    """The last number of the final-answer span (last \\boxed{...}, else the whole text)."""
    boxed = text.rfind("\\boxed{")
    if boxed >= 0:
        end = text.find("}", boxed)
        text = text[boxed + len("\\boxed{"): end if end >= 0 else len(text)]
    found = list(NUMBER.finditer(text))
    if not found:
        return None
    m = found[-1]
    negative = text[:m.start()].endswith("-") and not text[:m.start() - 1][-1:].isalnum()
    try:
        return float(m.group().replace(",", "")) * (-1 if negative else 1)
    except ValueError:
        return None


def run_trl(args, tmp):
    import torch

    torch.set_num_threads(THREADS)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    directory, name = os.path.split(args.gguf)
    print("trl: loading the GGUF (de-quantising to f32)", file=sys.stderr, flush=True)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # The weights are f32 already; GRPOTrainer refuses models still marked as quantised.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.quantization_method = None
    model.is_quantized = False

    problems = load_problems(args.problems, args.steps * PROMPTS_PER_STEP)
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"{p['question']}\n\n{INSTRUCTION}"}], "answer": str(p["answer"])}
        for p in problems
    ])

    tokens, rewards = [], []

    def correct_answer(prompts, completions, completion_ids, answer, **kwargs):
        tokens.append(sum(len(ids) for ids in completion_ids))
        scores = []
        for completion, gold in zip(completions, answer):
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            got, want = final_number(text), final_number(gold)
            scores.append(1.0 if got is not None and want is not None and abs(got - want) < 1e-9 else 0.0)
        rewards.append(sum(scores) / len(scores))
        return scores

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.starts, self.seconds = {}, []

        def on_step_begin(self, args_, state, control, **kwargs):
            self.starts[state.global_step] = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.starts[state.global_step - 1])

    config = GRPOConfig(
        output_dir=str(Path(tmp) / "trl"),
        use_cpu=True, bf16=args.bf16, fp16=False, gradient_checkpointing=False, use_vllm=False,
        report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True,
        seed=SEED, shuffle_dataset=False, dataloader_num_workers=0,
        max_steps=args.steps,
        per_device_train_batch_size=PROMPTS_PER_STEP * NUM_GENERATIONS // MICRO_BATCHES,
        gradient_accumulation_steps=MICRO_BATCHES,  # steps_per_generation defaults to this
        num_generations=NUM_GENERATIONS, num_iterations=1,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, scale_rewards="group",
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0,
    )
    assert config.generation_batch_size == PROMPTS_PER_STEP * NUM_GENERATIONS, config.generation_batch_size
    assert config.steps_per_generation == MICRO_BATCHES, config.steps_per_generation
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=correct_answer, args=config, train_dataset=dataset,
                          processing_class=tok, callbacks=[timer])
    generation = []
    generate_and_score = trainer._generate_and_score_completions

    def timed_generate_and_score(inputs):
        start = time.perf_counter()
        out = generate_and_score(inputs)
        generation.append(time.perf_counter() - start)
        return out

    trainer._generate_and_score_completions = timed_generate_and_score
    print(f"trl: training {args.steps} steps", file=sys.stderr, flush=True)
    trainer.train()
    if not (len(timer.seconds) == len(generation) == len(tokens) == args.steps):
        sys.exit(f"trl: {len(timer.seconds)} steps timed, {len(generation)} generation batches, "
                 f"{len(tokens)} reward calls; expected {args.steps} of each")
    walls, gens = timer.seconds[1:], generation[1:]
    return {
        "s_per_step": statistics.median(walls),
        "generation_s": statistics.median(gens),
        "learning_s": statistics.median([w - g for w, g in zip(walls, gens)]),
        "tokens_per_step": statistics.median(tokens[1:]),
        "reward": statistics.mean(rewards[1:]),
        "steps": [{"s": w, "generation_s": g} for w, g in zip(walls, gens)],
        "versions": {"torch": torch.__version__, "trl": __import__("trl").__version__,
                     "transformers": __import__("transformers").__version__},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per side; the first is warm-up")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--side", choices=["kaizen", "trl", "both"], default="both")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--decode-weights", choices=["f32", "int8", "bf16"], default="f32",
                        help="kaizen's actors.decode_weights")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 mixed precision on both sides: TRL's bf16=True (torch.autocast on "
                             "CPU) and kaizen's learner.bf16 = true")
    parser.add_argument("--skip-zero-signal", action="store_true",
                        help="let kaizen skip the forward/backward pass of zero-advantage samples")
    parser.add_argument("--no-share-prompt-prefix", action="store_true",
                        help="make kaizen recompute each group's prompt per sample, as TRL does")
    parser.add_argument("--kaizen", default="target/release/kaizen")
    parser.add_argument("--gguf", default=str(cache_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--problems", default=str(cache_dir() / "data" / "basic_arithmetic_easy" / "train.jsonl"))
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is warm-up)")
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be >= 1")
    for label, path in [("--gguf", args.gguf), ("--problems", args.problems)]:
        if not Path(path).is_file():
            parser.error(f"{label} {path}: no such file")
    args.gguf = str(Path(args.gguf).resolve())
    args.problems = str(Path(args.problems).resolve())
    load_problems(args.problems, args.steps * PROMPTS_PER_STEP)

    results = {}
    with tempfile.TemporaryDirectory(prefix="compare_trl-") as tmp:
        if args.side in ("kaizen", "both"):
            results["kaizen"] = run_kaizen(args, tmp)
        if args.side in ("trl", "both"):
            results["trl"] = run_trl(args, tmp)

    print(f"\nGRPO step: SmolLM2-135M-Instruct (f32 weights, decode {args.decode_weights}), {PROMPTS_PER_STEP} prompts x {NUM_GENERATIONS} generations, "
          f"<= {args.max_new_tokens} new tokens, lr {args.lr:g}, beta 0, {MICRO_BATCHES} micro-batches, "
          f"{THREADS} threads; median of steps 2..{args.steps}"
          + (" (bf16 mixed precision on both sides)" if args.bf16 else "")
          + (" (kaizen skips zero-signal samples)" if args.skip_zero_signal else "")
          + (" (kaizen recomputes shared prompts)" if args.no_share_prompt_prefix else ""))
    print(f"{'side':8} {'s/step':>8} {'generation':>11} {'learning':>9} {'tokens/step':>12} {'reward':>7}")
    for side, r in results.items():
        print(f"{side:8} {r['s_per_step']:8.2f} {r['generation_s']:11.2f} {r['learning_s']:9.2f} "
              f"{r['tokens_per_step']:12.0f} {r['reward']:7.3f}")
    summary = {"steps": args.steps, "max_new_tokens": args.max_new_tokens, "lr": args.lr,
               "skip_zero_signal": args.skip_zero_signal, "decode_weights": args.decode_weights,
               "bf16": args.bf16, "share_prompt_prefix": not args.no_share_prompt_prefix, **results}
    if len(results) == 2:
        ratio = results["trl"]["s_per_step"] / results["kaizen"]["s_per_step"]
        gen_ratio = results["trl"]["generation_s"] / results["kaizen"]["generation_s"]
        summary["speedup"] = ratio
        summary["generation_speedup"] = gen_ratio
        print(f"kaizen speedup (TRL s/step / kaizen s/step): {ratio:.2f}x; generation {gen_ratio:.2f}x")
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
