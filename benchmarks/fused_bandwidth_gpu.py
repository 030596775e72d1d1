"""L08 benchmark: memory bandwidth of the fused Triton softmax and layer norm (GPU).

    python benchmarks/fused_bandwidth_gpu.py --impl solutions --out benchmarks/results      # on the GPU
    python benchmarks/fused_bandwidth_gpu.py --plot benchmarks/results/fused_bandwidth_gpu.csv   # PNG, here
    python benchmarks/fused_bandwidth_gpu.py --impl solutions --smoke                        # CPU check

Softmax and layer norm do a handful of FLOPs per byte: they are memory-bound,
and the best they can do is move each byte once. So the yardstick is a copy of
the same tensor (y.copy_(x): one read and one write), and every method is
reported as achieved bandwidth counting exactly that minimum traffic,

    GB/s = 2 * x.numel() * x.element_size() / seconds        (1 read + 1 write)

whatever it really moves. For each op, dtype and row length n (256 .. 32768, and
one length that is not a power of two), the same run times on the same x:

    ours      impl.fused_ops_triton.triton_softmax(x) / triton_layer_norm(x, w, b)
    torch     torch.softmax(x, -1) / F.layer_norm(x, (n,), w, b)   (PyTorch's own fused CUDA kernels)
    compiled  torch.compile of the eager formula (x - max, exp, sum, divide / mean, var, rsqrt, affine)
    copy      y.copy_(x): the physical limit for 1 read + 1 write

The total size is fixed (--total-elements, default 2^25 = 32M elements: 64 MiB
in bfloat16, 128 MiB in float32, far more than the 50 MiB L2), so rows = total // n:
short rows mean many rows. Timing: coursekit.bench.gpu_time (CUDA events, L2
flushed before every call, median).

What to look for: the copy line is the roof (a device-to-device copy on an H100 SXM reaches
roughly 2.5-3 TB/s of the 3.35 TB/s peak). Our single-block kernels read and write each element
once, so they should sit close to it, targets printed at the end: >= 80% of the
copy's bandwidth at large sizes, and at least as fast as torch.softmax. Past
MAX_BLOCK_SIZE = 32768 (the 65536 point) the looped kernels read x twice, so at
best 2/3 of the copy if the second read came from HBM (it often hits L2). Short
rows are where per-program overheads show (several rows share a program to
compensate). torch.compile generates a similar fused kernel from the eager
formula; the eager formula without compile would be ~5 kernels and ~5x the traffic.

Writes fused_bandwidth_gpu.csv without matplotlib (the GPU machine need not have
it); --plot redraws fused_bandwidth_gpu.png from a CSV. --smoke runs a tiny
version on the CPU under TRITON_INTERPRET=1 (median_time instead of CUDA events,
torch.compile skipped if it fails) to check the script, not to measure anything.
"""
import argparse
import csv
import os
import sys
from pathlib import Path

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)

FIELDS = ["op", "dtype", "n_cols", "n_rows", "bytes", "ours_gbps", "torch_gbps", "compiled_gbps", "copy_gbps",
          "ours_over_copy", "ours_over_torch", "max_err", "device"]
DEFAULT_LENGTHS = [256, 512, 1024, 2048, 3000, 4096, 8192, 16384, 32768, 65536]
SINGLE_BLOCK_MAX = 32768  # the reference's MAX_BLOCK_SIZE: longer rows take the looped kernels


def eager_softmax(x):
    """The formula torch.compile is given: five elementwise/reduction ops, float32 arithmetic."""
    xf = x.float()
    m = xf.amax(dim=-1, keepdim=True)
    e = (xf - m).exp()
    return (e / e.sum(dim=-1, keepdim=True)).to(x.dtype)


def eager_layer_norm(x, w, b, eps=1e-5):
    xf = x.float()
    mean = xf.mean(dim=-1, keepdim=True)
    var = (xf - mean).square().mean(dim=-1, keepdim=True)
    return ((xf - mean) * (var + eps).rsqrt() * w.float() + b.float()).to(x.dtype)


def compiled(fn):
    """torch.compile(fn), or None where it is not available (e.g. no C++ compiler on a CPU box)."""
    import torch
    import torch._dynamo

    # Every (shape, dtype) is a new specialisation; the default limit (8) would
    # silently fall back to eager after the 8th.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)
    try:
        return torch.compile(fn, dynamic=False)
    except Exception as err:  # noqa: BLE001 - report and go on without it
        print(f"torch.compile unavailable ({type(err).__name__}: {err}); skipping 'compiled'")
        return None


def timer(device, smoke):
    from coursekit.bench import gpu_time, median_time
    if device == "cuda":
        return lambda fn: gpu_time(fn)
    return lambda fn: median_time(fn, warmup=1, repeat=3 if smoke else 10)


def measure_point(ft, op, dtype, n, total_elements, device, time_of, compiled_fn):
    """One point: x of (total // n, n) elements, every method timed on it; a row of the CSV."""
    import torch
    import torch.nn.functional as F

    n_rows = max(1, total_elements // n)
    gen = torch.Generator(device="cpu").manual_seed(n)
    x = torch.randn(n_rows, n, generator=gen).to(device=device, dtype=dtype)
    y = torch.empty_like(x)
    if op == "softmax":
        fns = {"ours": lambda: ft.triton_softmax(x), "torch": lambda: torch.softmax(x, dim=-1),
               "compiled": compiled_fn and (lambda: compiled_fn(x))}
    else:
        w = torch.randn(n, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(n, generator=gen).to(device=device, dtype=dtype)
        fns = {"ours": lambda: ft.triton_layer_norm(x, w, b), "torch": lambda: F.layer_norm(x, (n,), w, b),
               "compiled": compiled_fn and (lambda: compiled_fn(x, w, b))}
    fns["copy"] = lambda: y.copy_(x)
    bytes_moved = 2 * x.numel() * x.element_size()   # 1 read + 1 write of x: the least any method can move
    with torch.no_grad():
        # correctness first: a fast wrong kernel is not a result
        max_err = (fns["ours"]().float() - fns["torch"]().float()).abs().max().item()
        gbps = {}
        for method, fn in fns.items():
            gbps[method] = float("nan")
            if fn is None:
                continue
            try:
                fn()  # compile (Triton JIT, torch.compile) outside the timed region
                gbps[method] = bytes_moved / time_of(fn) / 1e9
            except Exception as err:  # noqa: BLE001 - e.g. torch.compile without a C++ compiler on a CPU box
                print(f"  {method} failed at n={n}: {type(err).__name__}: {str(err)[:200]}")
    return dict(op=op, n_cols=n, n_rows=n_rows, bytes=bytes_moved, ours_gbps=gbps["ours"],
                torch_gbps=gbps["torch"], compiled_gbps=gbps["compiled"], copy_gbps=gbps["copy"],
                ours_over_copy=gbps["ours"] / gbps["copy"], ours_over_torch=gbps["ours"] / gbps["torch"],
                max_err=max_err)


def run(args):
    import torch

    from coursekit.impl import Implementation

    ft = Implementation(args.impl).fused_ops_triton
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("no CUDA GPU: this benchmark measures GPU bandwidth. Use --smoke to check the script on the CPU.")
    time_of = timer(device, args.smoke)
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (TRITON_INTERPRET=1 smoke run)"
    compiled_softmax, compiled_layer_norm = compiled(eager_softmax), compiled(eager_layer_norm)
    print(f"device {name}; torch {torch.__version__}; total {args.total_elements} elements per point")

    rows_out = []
    for op in args.ops:
        for dtype_name in args.dtypes:
            for n in args.lengths:
                row = measure_point(ft, op, dtypes[dtype_name], n, args.total_elements, device, time_of,
                                    compiled_softmax if op == "softmax" else compiled_layer_norm)
                row.update(dtype=dtype_name, device=name)
                rows_out.append(row)
                print(f"  {op:10s} {dtype_name:8s} n={n:6d} rows={row['n_rows']:7d}  ours {row['ours_gbps']:7.4g}  "
                      f"torch {row['torch_gbps']:7.4g}  compiled {row['compiled_gbps']:7.4g}  "
                      f"copy {row['copy_gbps']:7.4g} GB/s  ours/copy {row['ours_over_copy']:.2f}  "
                      f"ours/torch {row['ours_over_torch']:.2f}  max|ours-torch| {row['max_err']:.1e}", flush=True)
    summary(rows_out)
    if args.smoke:
        print("(smoke run: the kernels ran under the Triton interpreter on the CPU; these numbers mean nothing)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / ("fused_bandwidth_smoke.csv" if args.smoke else "fused_bandwidth_gpu.csv")
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            for r in rows_out:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        print(f"wrote {path}")
        try:
            plot(path, path.with_suffix(".png"))
        except ImportError:
            print(f"matplotlib not installed: draw the PNG elsewhere with --plot {path}")


def summary(rows):
    """The lesson's targets, checked on the rows just measured."""
    print("\ntargets (single-block kernels, n >= 1024, i.e. the sizes where the copy itself is at full speed):")
    for op in sorted({r["op"] for r in rows}):
        for dtype in sorted({r["dtype"] for r in rows if r["op"] == op}):
            sel = [r for r in rows if r["op"] == op and r["dtype"] == dtype and 1024 <= r["n_cols"] <= SINGLE_BLOCK_MAX]
            if not sel:
                continue
            worst_copy = min(r["ours_over_copy"] for r in sel)
            worst_torch = min(r["ours_over_torch"] for r in sel)
            print(f"  {op:10s} {dtype:8s} ours/copy >= 0.80: min {worst_copy:.2f} "
                  f"[{'met' if worst_copy >= 0.8 else 'NOT met'}]   ours/torch >= 1.00: min {worst_torch:.2f} "
                  f"[{'met' if worst_torch >= 1.0 else 'NOT met'}]")


def plot(csv_path, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    panels = sorted({(r["op"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.3), squeeze=False)
    styles = {"ours": ("o-", "tab:red", "ours (Triton)"), "torch": ("s-", "tab:blue", "torch"),
              "compiled": ("^-", "tab:green", "torch.compile(eager)"), "copy": ("--", "0.3", "copy (1R + 1W)")}
    for ax, (op, dtype) in zip(axes[0], panels):
        sel = sorted((r for r in rows if r["op"] == op and r["dtype"] == dtype), key=lambda r: int(r["n_cols"]))
        n = [int(r["n_cols"]) for r in sel]
        for method, (style, color, label) in styles.items():
            values = [float(r[f"{method}_gbps"]) for r in sel]
            ax.plot(n, values, style, color=color, label=label, ms=4)
        if max(n) > SINGLE_BLOCK_MAX:  # past MAX_BLOCK_SIZE the kernels loop: two reads of x
            ax.axvspan(SINGLE_BLOCK_MAX * 1.2, max(n) * 1.5, color="0.92", zorder=0)
            ax.text(SINGLE_BLOCK_MAX * 1.25, 0.97, "looped:\n2 reads", transform=ax.get_xaxis_transform(),
                    va="top", fontsize=7, color="0.35")
        ax.set_xscale("log", base=2)
        ax.set_xticks(n, [str(v) for v in n], rotation=45, fontsize=7)
        ax.minorticks_off()
        ax.set_xlim(min(n) / 1.3, max(n) * 1.5)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("row length n (elements)")
        ax.set_ylabel("GB/s, counting 1 read + 1 write")
        ax.set_title(f"{op}, {dtype}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower center")
    fig.suptitle(f"{rows[0]['device']}: fixed total size per point, rows = total / n", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    print(f"wrote {png_path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", help="implementation package (default: $COURSE_IMPL or model)")
    parser.add_argument("--ops", nargs="+", default=["softmax", "layer_norm"], choices=["softmax", "layer_norm"])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS)
    parser.add_argument("--total-elements", type=int, default=2 ** 25)
    parser.add_argument("--out", type=Path, help="folder for fused_bandwidth_gpu.csv and .png")
    parser.add_argument("--plot", type=Path, metavar="CSV", help="only redraw the PNG next to this CSV")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny CPU run under TRITON_INTERPRET=1 to check the script (float32/float16 only)")
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, args.plot.with_suffix(".png"))
        return
    if args.smoke:
        # Must happen before triton is imported (by the implementation module).
        os.environ["TRITON_INTERPRET"] = "1"
        args.total_elements = min(args.total_elements, 2 ** 14)
        args.lengths = [n for n in args.lengths if n <= 4096][:3] + [20000]   # one looped length too
        args.dtypes = [d for d in args.dtypes if d != "bfloat16"] or ["float32"]   # no bfloat16 in the interpreter
    run(args)


if __name__ == "__main__":
    main()
