"""L05 benchmark: peak memory and time of tiled attention on the CPU, against
naive attention and F.scaled_dot_product_attention, as the sequence grows.

    .venv/bin/python benchmarks/flash_memory_cpu.py --impl solutions --out benchmarks/results

Three ways to compute the same forward out = softmax(Q K^T / sqrt(D)) V, for
one batch of H = 2 heads of D = 64, float32, Lq = Lk = L, not causal:
- tiled: the lesson's flash_attention_forward (blocks of --block rows, default
  128: large enough that Python's per-block overhead does not swamp the time);
- naive: torch.softmax(q @ k^T * scale, dim=-1) @ v, which builds the (L, L)
  scores and their softmax per head (skipped where 2 * B * H * L^2 * 4 bytes
  would pass --max-naive-gib);
- sdpa: torch.nn.functional.scaled_dot_product_attention, PyTorch's own fused
  CPU kernel (itself a tiled, FlashAttention-style loop in C++).

How memory is measured: every (method, L) runs in a fresh Python process. It
allocates q, k, v, runs the method once at L = 256 (so one-off costs such as
library initialisation are not counted), then resets the kernel's high-water
mark of its resident memory (writing 5 to /proc/self/clear_refs resets VmHWM to
the current RSS; where that is not possible it falls back to the growth of
getrusage's ru_maxrss), runs the method ONCE at length L and reports
VmHWM - RSS before the call: the most memory the call ever added, its output
included, counted by the operating system (so buffers inside torch's C++
kernels count too). The workers run with MALLOC_MMAP_THRESHOLD_=65536, so
every tensor of 64 KiB or more is mapped on allocation and unmapped when freed
and RSS follows what is alive (page-granular); smaller allocations come from
a heap that may already have room, so a peak below ~1 MiB is noise. Time is the
median of further calls in the same process.

What to look for:
- naive's peak grows like L^2 (x4 per doubling of L): two float32 (B, H, L, L)
  tensors alive at once, 4 GiB at L = 16k with H = 2;
- tiled's peak grows like L only, because the one thing of size L it keeps is
  its output (B, H, L, D) (the dotted line), plus one (block x block) tile of
  scores: the ratio naive / tiled grows about twofold per doubling;
- sdpa is flat the same way, and much faster: the tiled loop in Python pays
  for a dozen separate PyTorch calls per tile, which is why part 2 of the
  lesson moves the loop into one Triton kernel. The tiled version is slower
  than naive too: it is here to show the memory, not the speed.

Threads: every worker runs with --threads torch threads (default 1), the same
for all three methods. The tiled loop issues some 200 000 small operations at
L = 16k; with two OpenMP threads on a machine whose cores are also busy with
other work, each of them can stall waiting for the second thread, and the tiled
time swings by an order of magnitude from run to run. One thread makes the
comparison stable; pass --threads 2 on an idle machine to let naive and sdpa
use both cores.

The run takes about 2 minutes on a 2-core CPU (mostly L = 16k).
"""
import argparse
import csv
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
from coursekit.bench import print_table
from coursekit.impl import Implementation

METHODS = ("tiled", "naive", "sdpa")
FLOAT32_BYTES = 4


def attention_fn(method, impl_name, block):
    """The callable for one method: fn(q, k, v) -> out (B, H, L, D)."""
    if method == "tiled":
        fa = Implementation(impl_name).flash_attention

        def tiled(q, k, v):
            out, _ = fa.flash_attention_forward(q, k, v, block_q=block, block_k=block)
            return out
        return tiled
    if method == "naive":
        def naive(q, k, v):
            # (B, H, L, D) @ (B, H, D, L) -> (B, H, L, L)
            scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1]))
            return torch.softmax(scores, dim=-1) @ v  # (B, H, L, L) @ (B, H, L, D) -> (B, H, L, D)
        return naive
    if method == "sdpa":
        return F.scaled_dot_product_attention
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# ---------------------------------------------------------------- worker --

def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak():
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes(reset_worked):
    if reset_worked:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def worker(args):
    """One (method, L) in this fresh process: print a JSON line with peak bytes and seconds."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fn = attention_fn(args.method, args.impl, args.block)
    shape = (args.batch, args.heads, args.seq, args.head_dim)
    q, k, v = (torch.randn(shape) for _ in range(3))
    small = [t[:, :, :256].contiguous() for t in (q, k, v)]
    fn(*small)  # warm-up: library initialisation is not the method's memory
    del small
    gc.collect()

    reset_worked = reset_peak()
    before_rss = rss_bytes()
    before_peak = peak_rss_bytes(reset_worked)
    start = time.perf_counter()
    out = fn(q, k, v)
    first_s = time.perf_counter() - start
    peak = peak_rss_bytes(reset_worked) - (before_rss if reset_worked else before_peak)
    out_bytes = out.nbytes
    del out

    times = [first_s]
    for _ in range(args.repeat - 1):
        start = time.perf_counter()
        fn(q, k, v)
        times.append(time.perf_counter() - start)
    seconds = sorted(times[1:] or times)[len(times[1:] or times) // 2]  # median of the warm calls
    print(json.dumps(dict(peak_bytes=peak, seconds=seconds, out_bytes=out_bytes,
                          peak_source="VmHWM" if reset_worked else "ru_maxrss")))


# ------------------------------------------------------------------ main --

def run_one(args, method, seq):
    repeat = 4 if seq <= 4096 else 2
    cmd = [sys.executable, __file__, "--worker", "--method", method, "--seq", str(seq), "--repeat", str(repeat),
           "--batch", str(args.batch), "--heads", str(args.heads), "--head-dim", str(args.head_dim),
           "--block", str(args.block), "--threads", str(args.threads)]
    if args.impl:
        cmd += ["--impl", args.impl]
    # A fixed mmap threshold: every allocation of 64 KiB or more gets pages of its own from the
    # kernel and gives them back when freed, so RSS follows the live large tensors (glibc's
    # default threshold adapts upwards and would serve them from a heap that is never trimmed).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    if run.returncode != 0:
        raise RuntimeError(f"{method} at L={seq} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def check_agreement(args):
    """The three methods compute the same thing (L = 300, not a multiple of the block)."""
    q, k, v = (torch.randn(args.batch, args.heads, 300, args.head_dim, generator=torch.Generator().manual_seed(i))
               for i in range(3))
    outs = {m: attention_fn(m, args.impl, args.block)(q, k, v) for m in METHODS}
    return max((outs[m] - outs["sdpa"]).abs().max().item() for m in METHODS)


def plot(rows, path, config):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"tiled": "tab:green", "naive": "tab:red", "sdpa": "tab:blue"}
    labels = {"tiled": "tiled (flash_attention_forward)", "naive": "naive softmax(QK^T)V",
              "sdpa": "F.scaled_dot_product_attention"}
    seqs = sorted({r["seq"] for r in rows})
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(16, 4.6))
    for method in METHODS:
        got = [r for r in rows if r["method"] == method and r["peak_bytes"] != ""]
        ax0.plot([r["seq"] for r in got], [max(float(r["peak_bytes"]), 2**16) / 2**20 for r in got], "o-",
                 color=colors[method], label=labels[method])
        ax1.plot([r["seq"] for r in got], [float(r["seconds"]) for r in got], "o-", color=colors[method],
                 label=labels[method])
    by_seq = {r["seq"]: r for r in rows if r["method"] == "tiled"}
    ax0.plot(seqs, [float(by_seq[s]["scores_bytes"]) / 2**20 for s in seqs], "--", color="0.5",
             label="one float32 (B, H, L, L) score matrix")
    ax0.plot(seqs, [float(by_seq[s]["out_bytes"]) / 2**20 for s in seqs], ":", color="0.3",
             label="the output (B, H, L, D)")
    ax0.set_ylabel("peak memory added by one call (MiB)")
    ax0.set_title("peak memory (fresh process per point)")
    ax1.set_ylabel("seconds per call (median)")
    ax1.set_title("time")
    for ax in (ax0, ax1):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(seqs, [f"{s // 1024}k" if s % 1024 == 0 else str(s) for s in seqs])
        ax.minorticks_off()
        ax.set_xlabel("sequence length L (Lq = Lk)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)

    ratio_rows = ratios(rows)
    with_naive = [r for r in ratio_rows if r["naive_over_tiled_peak"] is not None]
    ax2.plot([r["seq"] for r in with_naive], [r["naive_over_tiled_peak"] for r in with_naive], "o-",
             color="tab:red", label="peak: naive / tiled")
    ax2.plot([r["seq"] for r in ratio_rows], [r["tiled_over_sdpa_time"] for r in ratio_rows], "s-",
             color="tab:blue", label="time: tiled / sdpa")
    ax2.plot([r["seq"] for r in with_naive], [r["tiled_over_naive_time"] for r in with_naive], "^-",
             color="tab:orange", label="time: tiled / naive")
    for r in with_naive:
        ax2.annotate(f"{r['naive_over_tiled_peak']:.0f}x", (r["seq"], r["naive_over_tiled_peak"]),
                     textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax2.axhline(1, color="0.5", lw=0.8)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_ylim(0.5, 2 * max([r["naive_over_tiled_peak"] for r in with_naive]
                              + [r["tiled_over_sdpa_time"] for r in ratio_rows]))  # room for the labels
    ax2.set_xticks(seqs, [f"{s // 1024}k" if s % 1024 == 0 else str(s) for s in seqs])
    ax2.minorticks_off()
    ax2.set_xlabel("sequence length L")
    ax2.set_title("ratios (same run)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(config, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ratios(rows):
    out = []
    for seq in sorted({r["seq"] for r in rows}):
        got = {r["method"]: r for r in rows if r["seq"] == seq}
        tiled, sdpa, naive = got["tiled"], got["sdpa"], got.get("naive")
        has_naive = naive is not None and naive["peak_bytes"] != ""
        out.append(dict(
            seq=seq,
            naive_over_tiled_peak=(float(naive["peak_bytes"]) / max(float(tiled["peak_bytes"]), 1.0)
                                   if has_naive else None),
            tiled_over_sdpa_time=float(tiled["seconds"]) / float(sdpa["seconds"]),
            tiled_over_naive_time=float(tiled["seconds"]) / float(naive["seconds"]) if has_naive else None))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", help="implementation package (default: $COURSE_IMPL or model)")
    parser.add_argument("--seqs", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=128, help="block_q = block_k of the tiled method")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every worker (default 1: see the docstring)")
    parser.add_argument("--max-naive-gib", type=float, default=6.0,
                        help="skip naive where its two (B, H, L, L) float32 tensors would pass this")
    parser.add_argument("--out", type=Path, help="folder for flash_memory_cpu.csv and flash_memory_cpu.png")
    parser.add_argument("--plot", type=Path, metavar="CSV", help="only redraw the PNG from a CSV of an earlier run")
    # worker mode (one measurement in a fresh process; used by main)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker(args)
        return
    if args.plot:
        with open(args.plot) as f:
            rows = [dict(r, seq=int(r["seq"])) for r in csv.DictReader(f)]
        png = args.plot.with_suffix(".png")
        plot(rows, png, f"redrawn from {args.plot.name}")
        print(f"wrote {png}")
        return

    B, H, D = args.batch, args.heads, args.head_dim
    print(f"max |difference| from sdpa at L = 300: {check_agreement(args):.2e} (all three compute the same thing)")
    rows = []
    for seq in args.seqs:
        scores_bytes = B * H * seq * seq * FLOAT32_BYTES
        for method in METHODS:
            row = dict(seq=seq, method=method, peak_bytes="", seconds="", out_bytes=B * H * seq * D * FLOAT32_BYTES,
                       scores_bytes=scores_bytes, peak_source="")
            if method == "naive" and 2 * scores_bytes > args.max_naive_gib * 2**30:
                print(f"  L={seq}: naive skipped (needs about {2 * scores_bytes / 2**30:.1f} GiB)", flush=True)
            else:
                row.update(run_one(args, method, seq))
                print(f"  L={seq} {method:5s}: peak +{row['peak_bytes'] / 2**20:8.1f} MiB, "
                      f"{row['seconds']:.3f} s", flush=True)
            rows.append(row)

    config = (f"B={B}, H={H}, D={D}, float32, not causal, tiled blocks {args.block} x {args.block}; "
              f"{args.threads} thread(s) per worker, torch {torch.__version__}")
    print(config)
    print_table(["L", "method", "peak MiB", "seconds", "(B,H,L,L) MiB"],
                [[r["seq"], r["method"], "skipped" if r["peak_bytes"] == "" else f"{r['peak_bytes'] / 2**20:.1f}",
                  "" if r["seconds"] == "" else f"{r['seconds']:.3f}", f"{r['scores_bytes'] / 2**20:.0f}"]
                 for r in rows])
    print("ratios measured in this run:")
    print_table(["L", "peak naive / tiled", "time tiled / sdpa", "time tiled / naive"],
                [[r["seq"], "-" if r["naive_over_tiled_peak"] is None else f"{r['naive_over_tiled_peak']:.1f}x",
                  f"{r['tiled_over_sdpa_time']:.1f}x",
                  "-" if r["tiled_over_naive_time"] is None else f"{r['tiled_over_naive_time']:.1f}x"]
                 for r in ratios(rows)])

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "flash_memory_cpu.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        plot(rows, args.out / "flash_memory_cpu.png", config)
        print(f"wrote {args.out / 'flash_memory_cpu.csv'} and {args.out / 'flash_memory_cpu.png'}")


if __name__ == "__main__":
    main()
