#!/usr/bin/env python3
"""Held-out results of finished runs, one row each, and their mean and spread.

Reads `eval/<env>/...` from each run's metrics.jsonl (kaizen's local run store): accuracy at
the first and last attempt, Δ, fixed/broken counts and the one-sided McNemar p, at the first
and last evaluated step. Usage:

    scripts/bench/summarize_eval.py runs/<experiment>/<run-id> [...] [--env self_correct]
"""
import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def last_eval(run: Path, env: str):
    """{step: {metric: value}} of the run's `eval/<env>/` metrics."""
    prefix = f"eval/{env}/"
    steps: dict[int, dict[str, float]] = {}
    with open(run / "metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if row["key"].startswith(prefix):
                steps.setdefault(row["step"], {})[row["key"][len(prefix):]] = row["value"]
    return steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--env", default="self_correct")
    args = ap.parse_args()
    print("| run | seed | step | t1 | tN | Δ | fixed / broken | p (McNemar, one-sided) |")
    print("|---|---|---|---|---|---|---|---|")
    finals = []
    for run in args.runs:
        steps = last_eval(run, args.env)
        if not steps:
            print(f"{run}: no eval/{args.env}/ metrics", file=sys.stderr)
            return 1
        seed = "?"
        try:
            params = json.loads((run / "params.json").read_text())
            seed = params.get("run.seed", params.get("seed", "?"))
        except (OSError, ValueError):
            pass
        for step in sorted(steps)[:: max(1, len(steps) - 1)]:
            m = steps[step]
            last = max((int(k[len("correct@t"):]) for k in m if k.startswith("correct@t") and k[len("correct@t"):].isdigit()), default=1)
            t1, tn = m.get("correct@t1", float("nan")), m.get(f"correct@t{last}", float("nan"))
            d = m.get(f"delta_t1_t{last}", tn - t1)
            se = m.get(f"delta_t1_t{last}_stderr", float("nan"))
            fixed, broken = m.get(f"fixed_t1_t{last}"), m.get(f"broken_t1_t{last}")
            p = m.get(f"mcnemar_p_t1_t{last}")
            fb = f"{fixed:.0f} / {broken:.0f}" if fixed is not None else ""
            ps = f"{p:.2g}" if p is not None else ""
            print(f"| {run.name} | {seed} | {step} | {100 * t1:.1f}% | {100 * tn:.1f}% | {100 * d:+.1f} ± {100 * se:.1f} | {fb} | {ps} |")
        first, final = steps[min(steps)], steps[max(steps)]
        finals.append((final.get("correct@t1", math.nan) - first.get("correct@t1", math.nan), final.get(f"delta_t1_t{last}", math.nan)))
    if len(finals) > 1:
        for name, values in (("turn-1 gain", [f[0] for f in finals]), ("final Δ", [f[1] for f in finals])):
            print(f"{name}: mean {100 * statistics.mean(values):+.1f} points, sd {100 * statistics.stdev(values):.1f}, "
                  f"min {100 * min(values):+.1f}, max {100 * max(values):+.1f} over {len(values)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
