"""Data for the `spc` world from reasoning-gym's chain_sum: training problems with step-by-step
solutions, and a held-out critic set of steps with planted errors.

    scripts/data/make_spc_sets.sh [--out data/spc] [--train 2000] [--heldout 200]

- train.jsonl: {question, answer, steps} from chain_sum seed 11. The steps are the left-to-right
  partial sums ("859 + 467 = 1326", "1326 - 914 = 412", ...), checked against reasoning-gym's
  answer.
- heldout_critic.jsonl: from chain_sum seed 1000011, with any expression also in train.jsonl
  dropped. (reasoning-gym seeds item i of seed s as item i + 1 of seed s - 1, so nearby seeds
  share their problems.)
  Each item shows one step of the solution (uniformly chosen). Half of them, alternately, have
  an error planted in the shown step: its result off by one, off by ten, with two adjacent
  digits swapped, or computed with the other operator (+ for -, - for +). The rest are shown
  unchanged. Fields: {question, steps, index, shown, truth ("correct"/"incorrect"), error}.
"""

import argparse
import json
import random
from pathlib import Path

import reasoning_gym as rg

TRAIN_SEED = 11
HELDOUT_SEED = 1_000_011
ERRORS = ["off_by_one", "off_by_ten", "swapped_digits", "other_operator"]


def steps_of(expression):
    tokens = expression.split()
    total = int(tokens[0])
    steps = []
    for op, term in zip(tokens[1::2], tokens[2::2]):
        value = total + int(term) if op == "+" else total - int(term)
        steps.append(f"{total} {op} {term} = {value}")
        total = value
    return steps, total


def plant(step, kind, rng):
    lhs, value = step.rsplit(" = ", 1)
    value = int(value)
    a, op, b = lhs.split(" ")
    if kind == "off_by_one":
        wrong = value + rng.choice([-1, 1])
    elif kind == "off_by_ten":
        wrong = value + rng.choice([-10, 10])
    elif kind == "swapped_digits":
        digits = list(str(abs(value)))
        if len(digits) < 2 or len(set(digits)) == 1:
            wrong = value + 1
        else:
            i = rng.randrange(len(digits) - 1)
            while digits[i] == digits[i + 1]:
                i = rng.randrange(len(digits) - 1)
            digits[i], digits[i + 1] = digits[i + 1], digits[i]
            wrong = int("".join(digits)) * (-1 if value < 0 else 1)
    else:
        wrong = int(a) - int(b) if op == "+" else int(a) + int(b)
        if wrong == value:
            wrong = value + 1
    assert wrong != value
    return f"{lhs} = {wrong}"


def problems(seed, n):
    for item in rg.create_dataset("chain_sum", size=n, seed=seed):
        expression = item["metadata"]["expression"]
        steps, total = steps_of(expression)
        assert str(total) == item["answer"], (expression, total, item["answer"])
        yield item["question"], item["answer"], expression, steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/spc")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--heldout", type=int, default=200)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seen = set()
    with open(out / "train.jsonl", "w") as f:
        for question, answer, expression, steps in problems(TRAIN_SEED, args.train):
            seen.add(expression)
            f.write(json.dumps({"question": question, "answer": answer, "steps": steps}) + "\n")
    rng = random.Random(HELDOUT_SEED)
    written, kinds = 0, {}
    with open(out / "heldout_critic.jsonl", "w") as f:
        for question, _, expression, steps in problems(HELDOUT_SEED, args.heldout * 2):
            if expression in seen or written == args.heldout:
                continue
            index = rng.randrange(len(steps))
            kind = ERRORS[(written // 2) % len(ERRORS)] if written % 2 == 0 else None
            shown = plant(steps[index], kind, rng) if kind else steps[index]
            item = {
                "question": question,
                "steps": steps,
                "index": index,
                "shown": shown,
                "truth": "incorrect" if kind else "correct",
                "error": kind,
            }
            f.write(json.dumps(item) + "\n")
            kinds[kind or "none"] = kinds.get(kind or "none", 0) + 1
            written += 1
    print(json.dumps({"train": len(seen), "heldout_critic": written, "kinds": kinds}))


if __name__ == "__main__":
    main()
