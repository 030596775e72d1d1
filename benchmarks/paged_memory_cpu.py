"""L11 benchmark: how much reserved KV memory holds no token, contiguous vs paged.

    python benchmarks/paged_memory_cpu.py --out benchmarks/results

A simulation of the allocator's bookkeeping (no model runs; seconds on any CPU).
Requests: prompt length p and answer length n drawn log-normal (medians
--prompt-median and --answer-median tokens, sigma --sigma), each request asking
for at most --max-new tokens (its answer stops earlier, at n <= max-new), a
context limit of --limit tokens (p + max-new <= limit). For each request, over
its lifetime (the prefill, then one step per generated token), the benchmark
adds up the slots reserved for it and the slots that hold a token, under:

- contiguous_limit: every request reserves the model's limit (L04's KVCache
  with max_seq_len = limit, what a static server must do);
- contiguous_request: every request reserves p + max-new, its own worst case
  (the best a contiguous allocator can do without knowing n);
- paged_b: blocks of b tokens taken when the last one is full (b in --blocks).

waste = 1 - (token-slots used) / (slots reserved), summed over all requests and
steps; repeated over --repeat seeds, the median and the spread (max - min) kept.
External fragmentation (holes between contiguous slabs) is NOT modelled, so the
contiguous figures are a lower bound on their waste.
"""
import argparse
import csv
import math
import statistics
from pathlib import Path

import _path  # noqa: F401  (the course folder on sys.path, as every benchmark)
import numpy as np


def sample_requests(rng, count, args):
    prompt = np.clip(np.round(rng.lognormal(math.log(args.prompt_median), args.sigma, count)), 1, args.limit - args.max_new)
    answer = np.clip(np.round(rng.lognormal(math.log(args.answer_median), args.sigma, count)), 1, args.max_new)
    return prompt.astype(np.int64), answer.astype(np.int64)


def waste(prompt, answer, args, strategy, block=None):
    used = reserved = 0
    for p, n in zip(prompt.tolist(), answer.tolist()):
        lengths = np.arange(p, p + n + 1)                   # tokens held after the prefill and each step
        used += lengths.sum()
        if strategy == "contiguous_limit":
            reserved += args.limit * lengths.size
        elif strategy == "contiguous_request":
            reserved += (p + args.max_new) * lengths.size
        else:
            reserved += (np.ceil(lengths / block) * block).sum()
    return 1.0 - used / reserved


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--prompt-median", type=float, default=300)
    parser.add_argument("--answer-median", type=float, default=200)
    parser.add_argument("--sigma", type=float, default=0.9)
    parser.add_argument("--max-new", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=2048)
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    strategies = [("contiguous_limit", None), ("contiguous_request", None)] + [("paged", b) for b in args.blocks]
    results = {s: [] for s in strategies}
    for seed in range(args.repeat):
        prompt, answer = sample_requests(np.random.default_rng(seed), args.requests, args)
        for strategy, block in strategies:
            results[(strategy, block)].append(waste(prompt, answer, args, strategy, block))
    print(f"# {args.requests} requests x {args.repeat} seeds; prompt ~ lognormal(median {args.prompt_median:g}, "
          f"sigma {args.sigma}), answer ~ lognormal(median {args.answer_median:g}) <= max-new {args.max_new}, "
          f"limit {args.limit}")
    rows = []
    for (strategy, block), values in results.items():
        name = strategy if block is None else f"paged_{block}"
        median, spread = statistics.median(values), max(values) - min(values)
        rows.append(dict(method=name, block_size=block or "", waste_median=round(median, 5),
                         waste_spread=round(spread, 5), repeats=len(values)))
        print(f"  {name:20s} waste {median:7.2%}  (spread {spread:.2%} over {len(values)} seeds)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "paged_memory_cpu.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out / 'paged_memory_cpu.csv'}")


if __name__ == "__main__":
    main()
