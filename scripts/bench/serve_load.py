#!/usr/bin/env python3
"""Closed-loop load generator for any OpenAI-compatible completion server.

For each concurrency level C it sends one warm-up request, then starts C clients that each send
their requests back to back, and measures the wall time of the whole level: requests/s,
completion tokens/s (the sum of ``usage.completion_tokens`` over the wall time), prompt tokens,
and p50/p99 request latency; with ``--stream`` also time to first token (first non-empty
content delta). Every server gets the same fixed prompts in the same order, the same
``max_tokens`` and temperature. ``ignore_eos`` is not part of the OpenAI API, so a request may
stop early at end-of-sequence: the tokens actually generated are counted, and the finish reasons
are reported.

    python serve_load.py --base-url http://127.0.0.1:8080/v1 --chat --concurrency 1 8 64 \\
        --requests-per-client 2 --max-tokens 64 --json out.json
    python serve_load.py --compare kaizen.json llamacpp.json   # ratios of two summaries

Requires ``httpx==0.28.1`` (the only dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

# Fixed, deterministic prompts: short questions and instructions with short answers.
PROMPTS = [
    "What is 2+2?",
    "Tom has 3 apples and buys 5 more. How many apples does he have now?",
    "What is 12 times 7?",
    "A train travels 60 km in one hour. How far does it travel in 3 hours?",
    "Name the capital of France.",
    "Write one sentence about the ocean.",
    "What is 100 minus 37?",
    "Sara has 24 candies and shares them equally among 4 friends. How many does each friend get?",
    "List three colours of the rainbow.",
    "What is the square root of 81?",
    "Translate 'good morning' into Spanish.",
    "If a shirt costs 15 dollars and is 20% off, what is the sale price?",
    "What is 9 plus 16?",
    "Give a synonym for 'happy'.",
    "A rectangle is 5 cm wide and 8 cm long. What is its area?",
    "Explain in one sentence what photosynthesis is.",
    "What is 144 divided by 12?",
    "Write a haiku about winter.",
    "Lisa reads 10 pages a day. How many pages does she read in a week?",
    "What is the boiling point of water in Celsius?",
    "What is 7 squared?",
    "Name two planets of the solar system.",
    "A box holds 6 eggs. How many eggs are in 5 boxes?",
    "Summarise the story of Cinderella in one sentence.",
    "What is 45 plus 55?",
    "Give an example of a prime number greater than 10.",
    "John is 8 years older than Mary, who is 12. How old is John?",
    "What does CPU stand for?",
    "What is 3 times 3 times 3?",
    "Write a short greeting for a birthday card.",
    "A car uses 5 litres of fuel per 100 km. How much fuel for 300 km?",
    "What is half of 250?",
]


@dataclass
class Result:
    """The outcome of one request."""

    latency: float
    ttft: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    text: str = ""
    error: str | None = None
    chunks: int = 0


@dataclass
class Level:
    """The measurements of one concurrency level."""

    concurrency: int
    results: list[Result] = field(default_factory=list)
    wall_s: float = 0.0


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default; None if empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def request_body(args: argparse.Namespace, model: str, k: int) -> dict:
    """The JSON body of request number k (its prompt is PROMPTS[k % len(PROMPTS)])."""
    prompt = PROMPTS[k % len(PROMPTS)]
    body: dict = {"model": model, "max_tokens": args.max_tokens, "temperature": args.temperature}
    if args.top_p is not None:
        body["top_p"] = args.top_p
    if args.seed is not None:
        body["seed"] = args.seed + k
    if args.chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if args.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _take_usage(res: Result, usage: dict | None) -> None:
    if usage:
        res.prompt_tokens = usage.get("prompt_tokens")
        res.completion_tokens = usage.get("completion_tokens")


async def one_request(client: httpx.AsyncClient, args: argparse.Namespace, model: str, k: int) -> Result:
    """Sends request k and returns its timing, token counts and text (or the error)."""
    path = "/chat/completions" if args.chat else "/completions"
    body = request_body(args, model, k)
    t0 = time.perf_counter()
    res = Result(latency=0.0)
    try:
        if not args.stream:
            r = await client.post(path, json=body)
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {r.text[:200]}"
            else:
                data = r.json()
                choice = data["choices"][0]
                res.text = (choice["message"].get("content") or "") if args.chat else choice.get("text", "")
                res.finish_reason = choice.get("finish_reason")
                _take_usage(res, data.get("usage"))
        else:
            async with client.stream("POST", path, json=body) as r:
                if r.status_code != 200:
                    res.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                else:
                    parts = []
                    async for line in r.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == "[DONE]":
                            break
                        chunk = json.loads(payload)
                        _take_usage(res, chunk.get("usage"))
                        for choice in chunk.get("choices") or []:
                            if args.chat:
                                piece = (choice.get("delta") or {}).get("content") or ""
                            else:
                                piece = choice.get("text") or ""
                            if piece:
                                if res.ttft is None:
                                    res.ttft = time.perf_counter() - t0
                                res.chunks += 1
                                parts.append(piece)
                            if choice.get("finish_reason"):
                                res.finish_reason = choice["finish_reason"]
                    res.text = "".join(parts)
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as e:
        res.error = f"{type(e).__name__}: {e}"
    res.latency = time.perf_counter() - t0
    return res


def make_client(args: argparse.Namespace, connections: int) -> httpx.AsyncClient:
    """An HTTP/1.1 client with one keep-alive connection per concurrent client."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.AsyncClient(
        base_url=args.base_url.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(args.timeout),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def run_level(args: argparse.Namespace, model: str, concurrency: int) -> Level:
    """Warm-up, then `concurrency` clients each sending their requests back to back."""
    per_client = max(args.requests_per_client, math.ceil(args.min_requests / concurrency))
    level = Level(concurrency)
    async with make_client(args, concurrency) as client:
        for w in range(args.warmup):
            res = await one_request(client, args, model, w)
            if res.error:
                raise SystemExit(f"warm-up request failed: {res.error}")
        slots: list[Result | None] = [None] * (per_client * concurrency)

        async def worker(c: int) -> None:
            for j in range(per_client):
                k = j * concurrency + c  # request k always carries prompt k % len(PROMPTS)
                slots[k] = await one_request(client, args, model, k)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in range(concurrency)))
        level.wall_s = time.perf_counter() - t0
    level.results = [r for r in slots if r is not None]
    return level


def summarise(level: Level) -> dict:
    """The summary row (a JSON-able dict) of one level."""
    ok = [r for r in level.results if r.error is None]
    have_usage = all(r.completion_tokens is not None for r in ok) and bool(ok)
    completion = sum(r.completion_tokens or 0 for r in ok) if have_usage else sum(r.chunks for r in ok)
    prompt = sum(r.prompt_tokens or 0 for r in ok)
    lat = [r.latency for r in ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    wall = level.wall_s
    return {
        "concurrency": level.concurrency,
        "requests": len(level.results),
        "errors": len(level.results) - len(ok),
        "first_error": next((r.error for r in level.results if r.error), None),
        "wall_s": wall,
        "requests_per_s": len(ok) / wall if wall else None,
        "completion_tokens": completion,
        "completion_tokens_from_usage": have_usage,
        "completion_tokens_per_s": completion / wall if wall else None,
        "mean_completion_tokens": completion / len(ok) if ok else None,
        "prompt_tokens": prompt,
        "latency_p50_s": percentile(lat, 50),
        "latency_p99_s": percentile(lat, 99),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "finish_reasons": dict(Counter(str(r.finish_reason) for r in ok)),
    }


def fmt(x: float | None, spec: str) -> str:
    """Formats a number, or '-' for None."""
    return "-" if x is None else format(x, spec)


def print_header(stream: bool) -> None:
    """The table header."""
    cols = (
        f"{'server':<10} {'conc':>4} {'reqs':>5} {'err':>3} {'wall s':>7} {'req/s':>6} {'compl tok':>9} "
        f"{'tok/s':>7} {'prompt tok':>10} {'lat p50':>7} {'lat p99':>7}"
    )
    if stream:
        cols += f" {'ttft p50':>8} {'ttft p99':>8}"
    print(cols + "  finish", flush=True)


def print_row(label: str, s: dict, stream: bool) -> None:
    """One table row."""
    row = (
        f"{label[:10]:<10} {s['concurrency']:>4} {s['requests']:>5} {s['errors']:>3} {fmt(s['wall_s'], '7.2f')} "
        f"{fmt(s['requests_per_s'], '6.2f')} {s['completion_tokens']:>9} {fmt(s['completion_tokens_per_s'], '7.1f')} "
        f"{s['prompt_tokens']:>10} {fmt(s['latency_p50_s'], '7.3f')} {fmt(s['latency_p99_s'], '7.3f')}"
    )
    if stream:
        row += f" {fmt(s['ttft_p50_s'], '8.3f')} {fmt(s['ttft_p99_s'], '8.3f')}"
    row += "  " + ",".join(f"{k}:{v}" for k, v in sorted(s["finish_reasons"].items()))
    if not s["completion_tokens_from_usage"]:
        row += " (tokens = stream chunks, no usage)"
    print(row, flush=True)
    if s["first_error"]:
        print(f"  first error: {s['first_error']}", flush=True)


async def resolve_model(args: argparse.Namespace) -> tuple[str, dict | None]:
    """The model to request: --model, else the first id listed by GET /models."""
    async with make_client(args, 1) as client:
        listing = None
        try:
            r = await client.get("/models")
            if r.status_code == 200:
                listing = r.json()
        except (httpx.HTTPError, ValueError):
            listing = None
    if args.model:
        return args.model, listing
    try:
        return listing["data"][0]["id"], listing
    except (TypeError, KeyError, IndexError):
        raise SystemExit("no --model given and GET /models listed none") from None


async def bench(args: argparse.Namespace) -> dict:
    """Runs every level and returns the JSON summary."""
    model, listing = await resolve_model(args)
    label = args.label or model
    summary = {
        "label": label,
        "base_url": args.base_url,
        "model": model,
        "models_listing": listing,
        "endpoint": "chat/completions" if args.chat else "completions",
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "stream": args.stream,
        "prompts": len(PROMPTS),
        "levels": [],
    }
    print(
        f"# {label}: model {model!r} at {args.base_url}, {summary['endpoint']}, "
        f"max_tokens {args.max_tokens}, temperature {args.temperature}, stream {args.stream}",
        flush=True,
    )
    print_header(args.stream)
    for i, c in enumerate(args.concurrency):
        level = await run_level(args, model, c)
        s = summarise(level)
        if i == 0 and args.show > 0:
            s["samples"] = [
                {"prompt": PROMPTS[k % len(PROMPTS)], "completion": r.text, "finish_reason": r.finish_reason}
                for k, r in enumerate(level.results[: args.show])
            ]
        summary["levels"].append(s)
        print_row(label, s, args.stream)
    for sample in summary["levels"][0].get("samples", []) if summary["levels"] else []:
        print(f"  Q: {sample['prompt']}\n  A: {sample['completion']!r} ({sample['finish_reason']})")
    return summary


def ratio(a: dict, b: dict, key: str) -> str:
    """a[key] / b[key] formatted, or '-' when either is missing or zero."""
    x, y = a.get(key), b.get(key)
    return "-" if not x or not y else f"{x / y:.2f}"


def compare(path_a: str, path_b: str) -> None:
    """Prints the ratios a/b of two summaries, level by level."""
    with open(path_a) as f:
        a = json.load(f)
    with open(path_b) as f:
        b = json.load(f)
    by_c = {s["concurrency"]: s for s in b["levels"]}
    print(
        f"{'conc':>4} {a['label'][:12]:>12} {b['label'][:12]:>12} "
        f"{'tok/s ratio':>11} {'req/s ratio':>11} {'p50 lat ratio':>13} {'mean tokens/request':>19}"
    )
    for sa in a["levels"]:
        sb = by_c.get(sa["concurrency"])
        if sb is None:
            continue
        print(
            f"{sa['concurrency']:>4} {fmt(sa['completion_tokens_per_s'], '12.1f')} "
            f"{fmt(sb['completion_tokens_per_s'], '12.1f')} {ratio(sa, sb, 'completion_tokens_per_s'):>11} "
            f"{ratio(sa, sb, 'requests_per_s'):>11} {ratio(sa, sb, 'latency_p50_s'):>13} "
            f"{fmt(sa['mean_completion_tokens'], '9.1f')} / {fmt(sb['mean_completion_tokens'], '.1f')}"
        )
    print(
        "(tok/s: completion tokens per second of wall time; ratios are "
        f"{a['label']}/{b['label']}; for latency lower is better)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", help="the server's OpenAI base URL, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--model", help="model name to request (default: the first id of GET /models)")
    p.add_argument("--label", help="name of this server in the table and JSON (default: the model)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="sent as 'Authorization: Bearer KEY' (default: $OPENAI_API_KEY, else none)",
    )
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64], help="concurrency levels")
    p.add_argument("--requests-per-client", type=int, default=4, help="requests each client sends per level")
    p.add_argument(
        "--min-requests",
        type=int,
        default=0,
        help="at least this many requests per level (more per client at low concurrency)",
    )
    p.add_argument("--warmup", type=int, default=1, help="uncounted requests before each level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="request k is sent with seed SEED+k")
    p.add_argument(
        "--chat",
        action="store_true",
        help="POST /chat/completions (the server applies the model's chat template); "
        "default POST /completions with the raw prompt",
    )
    p.add_argument("--stream", action="store_true", help="stream (SSE) and measure time to first token")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--show", type=int, default=2, help="print this many completions of the first level")
    p.add_argument("--json", help="write the summary here")
    p.add_argument(
        "--compare", nargs=2, metavar=("A_JSON", "B_JSON"), help="print the ratios A/B of two summaries and exit"
    )
    args = p.parse_args(argv)
    if not args.compare and not args.base_url:
        p.error("--base-url is required")
    if any(c < 1 for c in args.concurrency) or args.requests_per_client < 1:
        p.error("concurrency levels and --requests-per-client must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.compare:
        compare(*args.compare)
        return 0
    summary = asyncio.run(bench(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    failed = sum(s["errors"] for s in summary["levels"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
