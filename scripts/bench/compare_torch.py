"""Side-by-side throughput: kaizen vs PyTorch (hand-written KV-cache loop and
transformers.generate) on the same weights, machine and thread count, in one run.

Presets:
  tiny     issue #3's config (hidden 256, 4 layers, 4 heads, 2 KV heads, MLP 768, vocab 512):
           generate batch 32 x prompt 32 x 64 new tokens; GRPO group 1 prompt of 256 x G=8
           (16 new tokens); forward+backward 8 x 256.
  smollm2  SmolLM2-135M-Instruct: generate batch 1, batch 16 and a group of 8 samples of one
           prompt (64 new tokens); forward+backward 8 x 128.

Usage: scripts/bench/compare_torch.sh [tiny|smollm2]   (builds kaizen in release, makes the venv)
Prints a table of tokens/s and kaizen/PyTorch ratios, and a JSON summary line.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

THREADS = 2
torch.set_num_threads(THREADS)


def kaizen(binary, *args):
    out = subprocess.run([binary, "bench", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def prompt_tokens(length, salt, vocab):
    return [(i * 31 + salt * 17 + 7) % min(vocab, 256) for i in range(length)]


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_loop(model, prompts, new_tokens):
    """Hand-written batched KV-cache sampling loop (equal-length prompts, no padding)."""
    from transformers import DynamicCache

    ids = torch.tensor(prompts)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        for _ in range(new_tokens):
            probs = torch.softmax(out.logits[:, -1, :].float(), dim=-1)
            nxt = torch.multinomial(probs, 1)
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    return len(prompts) * new_tokens


def hf_generate(model, prompts, new_tokens):
    ids = torch.tensor(prompts)
    with torch.no_grad():
        model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
        )
    return len(prompts) * new_tokens


def torch_train(model, batch, seq, vocab):
    ids = torch.tensor([prompt_tokens(seq, b, vocab) for b in range(batch)])
    model.zero_grad(set_to_none=True)
    logits = model(ids).logits[:, :-1, :]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    (-logp.mean()).backward()
    return batch * (seq - 1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("preset", choices=["tiny", "smollm2"])
    parser.add_argument("--kaizen", default="target/release/kaizen")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_arg = ["--model", "tiny", "--vocab", "512"] if args.preset == "tiny" else ["--model", "smollm2"]
        common = [*model_arg, "--repeats", str(args.repeats)]
        if args.preset == "tiny":
            gen_cases = [("generate b32 p32 n64", 32, 1, 32, 64), ("group 1x8 p256 n16", 1, 8, 256, 16)]
            train_case = (8, 256)
        else:
            gen_cases = [("generate b1 p32 n64", 1, 1, 32, 64), ("generate b16 p32 n64", 16, 1, 32, 64),
                         ("group 1x8 p64 n64", 1, 8, 64, 64)]
            train_case = (8, 128)
        # kaizen first; it also exports the exact weights for PyTorch.
        k_gen = []
        for i, (name, batch, group, plen, new) in enumerate(gen_cases):
            extra = ["--export", f"{tmp}/model"] if i == 0 else []
            k_gen.append(kaizen(args.kaizen, "generate", *common, *extra, "--batch", str(batch), "--group",
                                str(group), "--prompt-len", str(plen), "--new-tokens", str(new)))
        # kaizen decoding from int8 or bf16 projections (actors.decode_weights), same cases.
        k_gen_packed = {"int8": [], "bf16": []}
        if args.preset == "smollm2":
            for kind, runs in k_gen_packed.items():
                for name, batch, group, plen, new in gen_cases:
                    runs.append(kaizen(args.kaizen, "generate", *common, f"--{kind}", "--batch", str(batch),
                                       "--group", str(group), "--prompt-len", str(plen),
                                       "--new-tokens", str(new)))
        k_group_sep = None
        if args.preset == "tiny":
            name, batch, group, plen, new = gen_cases[1]
            k_group_sep = kaizen(args.kaizen, "generate", *common, "--batch", str(batch), "--group", str(group),
                                 "--prompt-len", str(plen), "--new-tokens", str(new), "--no-share")
        k_train = kaizen(args.kaizen, "train", *common, "--batch", str(train_case[0]), "--seq", str(train_case[1]))

        model = AutoModelForCausalLM.from_pretrained(f"{tmp}/model", dtype=torch.float32).eval()
        vocab = model.config.vocab_size
        gen_times = {}
        for (name, batch, group, plen, new), k in zip(gen_cases, k_gen):
            prompts = [prompt_tokens(plen, b, vocab) for b in range(batch) for _ in range(group)]
            n = batch * group * new
            t_loop = timed(lambda: torch_loop(model, prompts, new), args.repeats)
            t_hf = timed(lambda: hf_generate(model, prompts, new), args.repeats)
            rows.append((name, k["tokens_per_s"], n / t_loop, n / t_hf))
            gen_times[name] = (n / t_loop, n / t_hf)
        for kind, runs in k_gen_packed.items():
            for (name, *_), k in zip(gen_cases, runs):
                loop, hf = gen_times[name]
                rows.append((f"{name} {kind} (gap {k['logprob_gap_mean']:.3f})", k["tokens_per_s"], loop, hf))
        if k_group_sep is not None:
            rows.append(("group, separate prefill (kaizen)", k_group_sep["tokens_per_s"], None, None))
        model.train()
        batch, seq = train_case
        t_train = timed(lambda: torch_train(model, batch, seq, vocab), args.repeats)
        rows.append((f"forward+backward {batch}x{seq}", k_train["tokens_per_s"], batch * seq / t_train, None))

    print(f"\npreset {args.preset}, {THREADS} threads, torch {torch.__version__}")
    print(f"{'case':36} {'kaizen tok/s':>13} {'torch loop':>11} {'hf generate':>12} {'k/loop':>7} {'k/hf':>6}")
    summary = []
    for name, k, loop, hf in rows:
        fmt = lambda x: f"{x:11.1f}" if x is not None else f"{'-':>11}"
        r1 = f"{k / loop:7.2f}" if loop else f"{'-':>7}"
        r2 = f"{k / hf:6.2f}" if hf else f"{'-':>6}"
        print(f"{name:36} {k:13.1f} {fmt(loop)} {fmt(hf):>12} {r1} {r2}")
        summary.append({"case": name, "kaizen": k, "torch_loop": loop, "hf_generate": hf})
    print(json.dumps({"preset": args.preset, "rows": summary}))


if __name__ == "__main__":
    sys.exit(main())
