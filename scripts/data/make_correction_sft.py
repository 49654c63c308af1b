#!/usr/bin/env python3
"""Make worked-correction chats for a self-correction SFT warm start (kaizen's `[sft] source`).

Each line is a two-attempt conversation in the chat JSONL format kaizen reads, with the job's own
texts (read from its TOML config): the problem and instruction, a first answer `\\boxed{N}` kept as
context only (`"weight": 0`), the correction prompt, and a trained second answer that recomputes
the expression one operation at a time and boxes the result:

    user:      Calculate 5 - 10 - 3.\\n\\nReply with only the final answer, like \\boxed{5}.
    assistant: \\boxed{-6}                                  (weight 0: not trained)
    user:      There might be an error. ...
    assistant: 5 - 10 = -5\\n-5 - 3 = -8\\n\\boxed{-8}       (trained)

The first answer is right with probability --right (default 0.5) and otherwise off by 1-3, so the
warm start teaches the second attempt to check the calculation whatever the first one said; the
first attempt itself is never trained. Works on problem sets whose `metadata.expression` is a
chain of integers joined by + and - (basic_arithmetic_easy, chain_sum_easy); other lines are
an error naming the line.

    scripts/data/make_correction_sft.py --problems train.jsonl --config job.toml --out sft.jsonl
"""
import argparse
import json
import random
import re
import sys
import tomllib
from pathlib import Path



def steps(expression):
    """'5 - 10 - 3' -> ['5 - 10 = -5', '-5 - 3 = -8'], -8 (left to right)."""
    parts = re.split(r"\s+([+-])\s+", expression.strip())
    if len(parts) < 3 or len(parts) % 2 == 0:
        raise ValueError(f"not a chain of + and - terms: {expression!r}")
    value = int(parts[0])
    lines = []
    for op, term in zip(parts[1::2], parts[2::2]):
        term = int(term)
        new = value + term if op == "+" else value - term
        lines.append(f"{value} {op} {term} = {new}")
        value = new
    return lines, value


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", required=True, type=Path, help="problem set JSONL (train split)")
    ap.add_argument("--config", required=True, type=Path, help="job TOML: its first [[env]]'s texts are used")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--right", type=float, default=0.5, help="probability that the first answer is right")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    job = tomllib.loads(args.config.read_text())
    params = job["env"][0].get("params", {})
    try:
        instruction, correction = params["instruction"], params["correction_prompt"]
    except KeyError as e:
        sys.exit(f"{args.config}: env.params.{e.args[0]} is needed (the texts the chats must use)")

    rng = random.Random(args.seed)
    out = []
    for n, line in enumerate(args.problems.read_text().splitlines(), 1):
        if not line.strip():
            continue
        problem = json.loads(line)
        try:
            lines, value = steps(problem["metadata"]["expression"])
        except (KeyError, ValueError) as e:
            sys.exit(f"{args.problems}:{n}: {e}")
        if str(value) != str(problem["answer"]).strip():
            sys.exit(f"{args.problems}:{n}: computed {value}, the problem says {problem['answer']}")
        first = value if rng.random() < args.right else value + rng.choice([-3, -2, -1, 1, 2, 3])
        second = "\n".join(lines + [f"\\boxed{{{value}}}"])
        out.append({"messages": [
            {"role": "user", "content": f"{problem['question']}\n\n{instruction}"},
            {"role": "assistant", "content": f"\\boxed{{{first}}}", "weight": 0},
            {"role": "user", "content": correction},
            {"role": "assistant", "content": second},
        ]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(c) + "\n" for c in out))
    print(f"{args.out}: {len(out)} conversations")


if __name__ == "__main__":
    main()
