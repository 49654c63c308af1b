#!/usr/bin/env python3
"""Writes preference pairs for kaizen's offline DPO stage (`[preference]`).

One-step arithmetic in the first-turn format of the `self_correct` world with the `starter`
generator ("Compute 3 + 5.\n\nAnswer with the result."), replies in the world's expert format
("3 + 5 = 8\nThe answer is \\boxed{8}."): the chosen reply has the right result, the rejected
one a near miss. A script computes the labels, so these pairs are an *oracle*
baseline (the data path and TRL's file format), not self-improvement; kaizen's online DPO
(`algorithm = "dpo"`) pairs the policy's own samples instead.

    python3 scripts/data/make_preference_pairs.py --out examples/preference/arithmetic_pairs.jsonl

Deterministic for a seed; standard library only.
"""

import argparse
import json
import random


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--instruction", default="Answer with the result.")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        for i in range(args.count):
            a = rng.randint(1, 9)
            op = rng.choice("+-")
            b = rng.randint(1, 9) if op == "+" else rng.randint(0, a)
            answer = a + b if op == "+" else a - b
            wrong = answer + rng.choice([-2, -1, 1, 2])
            if wrong < 0:
                wrong = answer + 1
            prompt = f"Compute {a} {op} {b}.\n\n{args.instruction}"
            reply = lambda r: f"{a} {op} {b} = {r}\nThe answer is \\boxed{{{r}}}."
            # Alternate TRL's two formats, so both stay exercised.
            if i % 2 == 0:
                pair = {"prompt": prompt, "chosen": reply(answer), "rejected": reply(wrong)}
            else:
                pair = {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": reply(answer)}],
                    "rejected": [{"role": "assistant", "content": reply(wrong)}],
                }
            f.write(json.dumps(pair) + "\n")


if __name__ == "__main__":
    main()
