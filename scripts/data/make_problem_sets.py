#!/usr/bin/env python3
"""Make JSONL problem sets for kaizen from reasoning-gym (offline, seeded).

Writes <out>/<family>/train.jsonl and <out>/<family>/heldout.jsonl, one problem per line:
{"question", "answer", "verifier", "metadata"} (the format kaizen's ProblemSet reads), and for
the arithmetic families a "twin": the question reworded with the same answer (a sum's terms in
reverse order: "Calculate 7 - 3 + 2." -> "What is the value of 2 - 3 + 7?"), the rephrased
question of Co-Reward (`[[env]] twin = { ask = "twin" }`, `grpo.reward_source = "co_reward"`).
The held-out split is drawn with a distant seed (reasoning-gym seeds item i with seed + i, so
seed + 1 would repeat the training items shifted by one) and never repeats a training question.

Families: basic_arithmetic, chain_sum, gsm_symbolic, knights_knaves, and the easy settings
basic_arithmetic_easy / chain_sum_easy (2-3 one-digit terms, + and - only) for small models.

    scripts/data/make_problem_sets.sh                      # defaults below
    scripts/data/make_problem_sets.sh --train 2000 --heldout 200 --seed 7
    scripts/data/make_problem_sets.sh --sample tests/fixtures/envs/reasoning_gym_sample.jsonl
"""
import argparse
import json
import os
import sys
from pathlib import Path

import reasoning_gym as rg

# family name -> (reasoning-gym dataset, config kwargs, kaizen verifier)
FAMILIES = {
    # Arithmetic answers must be computed numbers ("numeric"): "math"'s symbolic equality would
    # accept the question restated ("9 + 1" for 10), a reward a policy learns to hack.
    "basic_arithmetic": ("basic_arithmetic", {}, "numeric"),
    "basic_arithmetic_easy": (
        "basic_arithmetic",
        dict(min_terms=2, max_terms=3, min_digits=1, max_digits=1, operators=("+", "-"),
             allow_parentheses=False, allow_negation=False),
        "numeric",
    ),
    "chain_sum": ("chain_sum", {}, "numeric"),
    "chain_sum_easy": ("chain_sum", dict(min_terms=2, max_terms=3, min_digits=1, max_digits=1), "numeric"),
    "gsm_symbolic": ("gsm_symbolic", {}, "math"),
    "knights_knaves": ("knights_knaves", {}, "knights_knaves"),
}

HELDOUT_SEED_OFFSET = 10_000_000
TWIN_FAMILIES = {"basic_arithmetic", "chain_sum"}


def twin(expression):
    """The expression reworded: a flat sum of integers ("7 - 3 + 2", "2 - -1") with its signed
    terms in reverse order, anything else (parentheses, * and /) as it is, asked as "What is
    the value of ...?"."""
    tokens = expression.split()
    terms = []
    if len(tokens) % 2 == 1 and all(op in ("+", "-") for op in tokens[1::2]):
        try:
            values = [int(t) for t in tokens[0::2]]
            terms = [values[0]] + [v if op == "+" else -v for op, v in zip(tokens[1::2], values[1:])]
        except ValueError:
            terms = []
    if terms:
        terms.reverse()
        text = str(terms[0])
        for t in terms[1:]:
            text += f" - {-t}" if t < 0 else f" + {t}"
        assert eval(text) == eval(expression.replace("- -", "+ ")), (expression, text)
    else:
        text = expression
    return f"What is the value of {text}?"


def records(family, size, seed):
    name, kwargs, verifier = FAMILIES[family]
    ds = rg.create_dataset(name, size=size, seed=seed, **kwargs)
    for x in ds:
        row = {
            "question": x["question"],
            "answer": x["answer"],
            "verifier": verifier,
            "metadata": x["metadata"],
        }
        if name in TWIN_FAMILIES and x["metadata"].get("expression"):
            row["twin"] = twin(x["metadata"]["expression"])
        yield row


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
    tmp.rename(path)


def main():
    cache = Path(os.environ.get("KAIZEN_CACHE", Path.home() / ".cache" / "kaizen"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=cache / "data")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--train", type=int, default=5000, help="training problems per family")
    p.add_argument("--heldout", type=int, default=500, help="held-out problems per family")
    p.add_argument("--seed", type=int, default=42, help="training seed; held-out uses seed + 10,000,000")
    p.add_argument("--sample", type=Path, help="also write a small mixed sample (5 per family) here")
    args = p.parse_args()

    sample = []
    for family in args.families:
        train = list(records(family, args.train, args.seed))
        seen = {r["question"] for r in train}
        heldout = [r for r in records(family, args.heldout * 10, args.seed + HELDOUT_SEED_OFFSET) if r["question"] not in seen]
        heldout = heldout[: args.heldout]
        write_jsonl(args.out / family / "train.jsonl", train)
        write_jsonl(args.out / family / "heldout.jsonl", heldout)
        print(f"{family}: {len(train)} train, {len(heldout)} held-out -> {args.out / family}", file=sys.stderr)
        sample += train[:5]
    if args.sample:
        write_jsonl(args.sample, sample)
        print(f"sample: {len(sample)} problems -> {args.sample}", file=sys.stderr)


if __name__ == "__main__":
    main()
