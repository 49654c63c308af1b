#!/usr/bin/env python3
"""How well a `translate` judge ranks translations: from a run's samples.jsonl.

GRPO learns from ranks within a group (the samples of one source sentence), so the number that
matters is the within-group Spearman correlation between the judge's score and chrF against the
reference (a metric the judge never sees), averaged over groups with variation in both.

    python3 scripts/bench/translate_judge_agreement.py runs/<experiment>/<run>/samples.jsonl [...]

Run the job with `--set run.log_samples=<episodes a step>` so that whole groups are written.
"""
import collections
import json
import math
import sys


def ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    sa = math.sqrt(sum((x - ma) ** 2 for x in a))
    sb = math.sqrt(sum((y - mb) ** 2 for y in b))
    if sa == 0 or sb == 0:
        return None
    return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / (sa * sb)


def spearman(a, b):
    return pearson(ranks(a), ranks(b))


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def main(paths):
    for path in paths:
        groups = collections.defaultdict(list)
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                m = row["metrics"]
                if "chrf" not in m or "judge_score" not in m:
                    continue
                reward = (row.get("rewards") or {}).get("translator", [0.0])[-1]
                groups[(row["step"], row["group"])].append((m["judge_score"], m["chrf"], reward, m))
        judge_rho, reward_rho, source_rho = [], [], []
        for rows in groups.values():
            chrf = [r[1] for r in rows]
            source = [r[3].get("source_chrf", 0.0) for r in rows]
            for out, col, against in ((judge_rho, 0, chrf), (reward_rho, 2, chrf), (source_rho, 0, source)):
                rho = spearman([r[col] for r in rows], against)
                if rho is not None:
                    out.append(rho)
        flat = [r for rows in groups.values() for r in rows]
        print(f"{path}: {len(flat)} episodes, {len(groups)} groups")
        print(f"  within-group Spearman(judge score, chrF): {mean(judge_rho):+.3f} over {len(judge_rho)} groups")
        print(f"  within-group Spearman(reward, chrF):      {mean(reward_rho):+.3f} over {len(reward_rho)} groups")
        print(f"  within-group Spearman(judge score, chrF against the source): {mean(source_rho):+.3f}")
        for key in ("chrf", "source_chrf", "judge_unparsed", "length_guarded", "copy_guarded"):
            values = [r[3][key] for r in flat if key in r[3]]
            if values:
                print(f"  mean {key}: {mean(values):.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
