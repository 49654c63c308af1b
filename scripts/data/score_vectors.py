#!/usr/bin/env python3
"""Score candidate answers with reasoning-gym's own score_answer, as test vectors for kaizen's
verifiers (tests/fixtures/envs/reasoning_gym_score_vectors.json).

For every problem of the committed sample (tests/fixtures/envs/reasoning_gym_sample.jsonl) it
scores the gold answer, re-spelt forms of it (spaces, trailing .0, thousands separators,
reordered knights-and-knaves clauses) and wrong answers; `form` says which. kaizen's verifier
must accept every candidate reasoning-gym scores 1.0 and reject every wrong one. It is more
lenient than reasoning-gym's exact-string check on re-spellings of the same value (` 30 `,
`30.0`: basic_arithmetic scores those 0.5), which it accepts by design.

    source scripts/lib/venv.sh
    py=$(kaizen_venv data reasoning-gym==0.1.25 math-verify==0.9.0 sacrebleu==2.6.0)
    $py scripts/data/score_vectors.py
"""
import json
from decimal import Decimal
from pathlib import Path

import reasoning_gym as rg

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests/fixtures/envs/reasoning_gym_sample.jsonl"
OUT = ROOT / "tests/fixtures/envs/reasoning_gym_score_vectors.json"


def numeric_candidates(gold):
    value = Decimal(gold)
    out = [(gold, "gold"), (f" {gold} ", "respelt"), (f"{gold}.0", "respelt"), (str(value + 1), "wrong"),
           (str(-value) if value != 0 else "1", "wrong"), ("", "wrong")]
    if abs(value) >= 1000:
        out.append((f"{int(value):,}", "respelt"))
    return out


def knights_candidates(gold):
    clauses = [c.strip().rstrip(".") for c in gold.replace(", and ", "|").split("|")]
    swapped = gold
    roles = [c.split(" is ")[1] for c in clauses]
    if len(roles) == 2 and roles[0] != roles[1]:
        swapped = f"{clauses[0].split(' is ')[0]} is {roles[1]}, and {clauses[1].split(' is ')[0]} is {roles[0]}."
    return [(gold, "gold"), (" and ".join(reversed(clauses)), "respelt"), (gold.lower(), "respelt"),
            (swapped, "wrong"), (clauses[0] + ".", "wrong"), ("", "wrong")]


def main():
    cases = []
    for line in SAMPLE.read_text().splitlines():
        entry = json.loads(line)
        family = entry["metadata"]["source_dataset"]
        ds = rg.create_dataset(family, size=1, seed=0)
        if entry["verifier"] == "knights_knaves":
            candidates = knights_candidates(entry["answer"])
        else:
            candidates = numeric_candidates(entry["answer"])
        for candidate, form in candidates:
            score = ds.score_answer(answer=candidate, entry=entry)
            cases.append({
                "family": family,
                "verifier": entry["verifier"],
                "gold": entry["answer"],
                "candidate": candidate,
                "form": form,
                "score": score,
            })
    OUT.write_text(json.dumps({
        "call": "reasoning_gym.create_dataset(family).score_answer(answer=candidate, entry=entry)",
        "version": "reasoning-gym 0.1.25",
        "cases": cases,
    }, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases -> {OUT}")


if __name__ == "__main__":
    main()
