"""L02 benchmark: softmax implementations on the CPU, each as a ratio of
torch.softmax's time measured in the same run (ratio > 1: slower than torch).

    .venv/bin/python benchmarks/softmax_cpu.py --impl solutions

What to look for: torch.softmax is one fused kernel (about two passes over
x). Every eager operation is a full pass of its own: naive_softmax makes three
(exp, sum, divide) and stable_softmax about seven (max, guard, subtract, exp,
sum, guard, divide), so at long rows, where memory traffic dominates, the
ratios track those pass counts; at short rows the per-operation overhead
dominates instead. online_softmax reads x once for its statistics, but each
block is a separate handful of kernel launches, so small blocks are slow: the
one-pass saving only pays once the loop runs inside one kernel (L05, L08).
"""
import argparse

import torch

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
from coursekit.bench import median_time, print_table
from coursekit.impl import Implementation


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", help="implementation package (default: $COURSE_IMPL or model)")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 2048, 16384])
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[64, 1024])
    args = parser.parse_args()
    sm = Implementation(args.impl).softmax
    torch.manual_seed(0)

    header = ["length", "torch.softmax ms", "naive x", "stable x", *(f"online b={b} x" for b in args.block_sizes)]
    rows = []
    for length in args.lengths:
        x = torch.randn(args.rows, length)
        base = median_time(lambda: torch.softmax(x, dim=-1))
        ratios = [median_time(lambda: sm.naive_softmax(x)) / base, median_time(lambda: sm.stable_softmax(x)) / base]
        ratios += [median_time(lambda: sm.online_softmax(x, b), repeat=5) / base for b in args.block_sizes]
        rows.append([length, f"{base * 1e3:.2f}", *(f"{r:.2f}" for r in ratios)])
    print(f"softmax over {args.rows} rows, float32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print_table(header, rows)


if __name__ == "__main__":
    main()
