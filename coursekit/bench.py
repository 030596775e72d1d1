"""Timing for benchmarks/: median wall time of a call, GPU-synchronised.

Benchmarks report ratios against a baseline timed in the same run, never
absolute targets: the machine changes, the ratio is what the lesson claims.
"""
import statistics
import time

import torch


def median_time(fn, *, warmup=3, repeat=15, device="cpu"):
    """Median seconds per fn() call after `warmup` untimed calls."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_table(header, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for row in (header, ["-" * w for w in widths], *rows):
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


def gpu_time(fn, *, warmup_ms=25, rep_ms=100):
    """Median seconds per fn() on a CUDA GPU, from CUDA events.

    Uses Triton's do_bench: it clears the L2 cache before every call, so each
    call reads its inputs from HBM as it would inside a model, and it picks the
    number of calls from the time budget (warmup_ms, rep_ms).
    """
    from triton.testing import do_bench
    return do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") / 1e3
