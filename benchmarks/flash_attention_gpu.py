"""L05 benchmark: our Triton FlashAttention against PyTorch's fused kernels (GPU).

    python benchmarks/flash_attention_gpu.py --impl solutions --out benchmarks/results
    python benchmarks/flash_attention_gpu.py --plot benchmarks/results/flash_attention_gpu.csv

For each sequence length L (1k..16k), head dim D (64, 128), causal or not and
dtype (float16, bfloat16) it times, in the same run and on the same inputs:

    ours     impl.flash_attention_triton.triton_flash_attention(_forward)
    fa2      F.scaled_dot_product_attention pinned to SDPBackend.FLASH_ATTENTION
             (PyTorch's build of FlashAttention-2)
    cudnn    F.scaled_dot_product_attention pinned to SDPBackend.CUDNN_ATTENTION
    naive    softmax(q k^T * scale) v in eager PyTorch (stops where it runs out of memory)

forward alone ("fwd") and forward + backward ("fwd+bwd"), and reports TFLOP/s:

    forward FLOPs = 4 * B * H * L * L * D      (two matmuls of 2*L*L*D each, per head)
                    / 2 when causal            (half the score matrix is skipped)
    backward      = 2.5 x forward              (five matmuls instead of two; the usual convention)

The batch shrinks as L grows so every point holds 16k tokens (B = 16384 / L) and
H = 2048 / D heads (a 2048-wide model), as in the FlashAttention papers' plots.
Ratios ours/fa2 and ours/cudnn are computed from the same run. Timing:
coursekit.bench.time_interleaved: at each configuration every (method, mode) is
timed --repeats times (default 5), taken in turn so that a slow spell of a
shared GPU hits them all; each timing is coursekit.bench.gpu_time (CUDA events,
L2 flushed between calls, median). The CSV keeps the median ms (what the
targets are judged on; TFLOP/s from it) and the min and max (the spread).

Targets (issue 4, set on an H100; the committed results are from an H200, the
H100 ones are in benchmarks/results/h100/): forward >= 1.1x fa2 at L >= 4k for
D = 64 and 128, causal and not; forward + backward >= 0.9x fa2. The script
prints them.

Writes flash_attention_gpu.csv as it goes (no matplotlib needed on the GPU
machine); --plot redraws flash_attention_gpu.png from a CSV.
"""
import argparse
import math

import torch
import torch.nn.functional as F

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
from coursekit.bench import CsvLog, add_common_args, device_name, gpu_time, read_csv, spread, time_interleaved

TOKENS, WIDTH = 16384, 2048
FIELDS = ["dtype", "head_dim", "causal", "seq_len", "batch", "heads", "mode", "method", "ms", "ms_min", "ms_max",
          "runs", "tflops", "max_err", "device"]


def flops(batch, heads, seq_len, head_dim, causal, mode):
    forward = 4 * batch * heads * seq_len * seq_len * head_dim / (2 if causal else 1)
    return forward * (3.5 if mode == "fwd+bwd" else 1.0)


def naive_attention(q, k, v, causal):
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5   # (B, H, L, D) @ (B, H, D, L) -> (B, H, L, L)
    if causal:
        L = q.shape[-2]
        scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def methods(impl, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa(backend):
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return run

    return {
        "ours": lambda q, k, v: impl.flash_attention_triton.triton_flash_attention(q, k, v, causal=causal),
        "fa2": sdpa(SDPBackend.FLASH_ATTENTION),
        "cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
        "naive": lambda q, k, v: naive_attention(q, k, v, causal),
    }


def make_step(fn, q, k, v, mode):
    """One call (mode fwd) or one forward + backward (fwd+bwd), run once (compile, autotune) before timing."""
    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(q, k, v)
    else:
        grad = torch.randn_like(q)

        def step():
            torch.autograd.grad(fn(q, k, v), (q, k, v), grad)
    step()  # compile / autotune outside the timed region
    return step


def run(args):
    """Yield one CSV row per (configuration, method, mode), as soon as it is measured."""
    from coursekit.impl import Implementation

    impl = Implementation(args.impl)
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for head_dim in args.head_dims:
            for causal in args.causal:
                for seq_len in args.seq_lens:
                    batch, heads = max(1, TOKENS // seq_len), WIDTH // head_dim
                    gen = torch.Generator(device="cuda").manual_seed(0)
                    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, device="cuda", dtype=dtype,
                                           generator=gen).requires_grad_() for _ in range(3))
                    with torch.no_grad():
                        expected = methods(impl, causal)["fa2"](q, k, v).float()
                    steps, errors = {}, {}
                    for name, fn in methods(impl, causal).items():
                        if name not in args.methods or (name == "naive" and seq_len > args.naive_max):
                            continue
                        try:
                            with torch.no_grad():
                                errors[name] = (fn(q, k, v).float() - expected).abs().max().item()
                        except (torch.OutOfMemoryError, RuntimeError) as e:  # naive at long L; unsupported backends
                            print(f"  {name} L={seq_len}: skipped ({str(e).splitlines()[0][:80]})")
                            torch.cuda.empty_cache()
                            continue
                        for mode in args.modes:
                            try:
                                steps[(name, mode)] = make_step(fn, q, k, v, mode)
                            except (torch.OutOfMemoryError, RuntimeError) as e:
                                print(f"  {name} {mode} L={seq_len}: skipped ({str(e).splitlines()[0][:80]})")
                                torch.cuda.empty_cache()
                    times = time_interleaved(steps, repeats=args.repeats, timer=gpu_time)
                    for (name, mode), ts in times.items():
                        row = dict(dtype=dtype_name, head_dim=head_dim, causal=causal, seq_len=seq_len,
                                   batch=batch, heads=heads, mode=mode, method=name,
                                   **spread(ts, scale=1e3, prefix="ms", digits=4))
                        row.update(tflops=round(flops(batch, heads, seq_len, head_dim, causal, mode)
                                                / (row["ms"] * 1e-3) / 1e12, 1),
                                   max_err=f"{errors[name]:.2e}", device=device_name())
                        yield row
                        print(f"{dtype_name:8s} D={head_dim:3d} causal={causal!s:5s} L={seq_len:5d} {mode:7s} "
                              f"{name:5s} {row['ms']:8.3f} ms [{row['ms_min']:.3f}-{row['ms_max']:.3f}] "
                              f"{row['tflops']:6.1f} TFLOP/s  max|diff vs fa2| {errors[name]:.1e}", flush=True)
                    del q, k, v
                    torch.cuda.empty_cache()


SWEEP = {
    "fwd": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3)],
    "dkdv": [(64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 4, 3), (64, 64, 4, 3)],
    "dq": [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3)],
}


def sweep(impl, args, seq_len=8192):
    """Pick (BLOCK_M, BLOCK_N, warps, stages) per kernel and head dim: time each
    candidate of SWEEP at L = seq_len, float16, causal and not, and keep the one
    with the least total time. Needs the reference's GPU_TILES table (it is
    rewritten in place for the rest of the run and printed, to be pasted back)."""
    ft = impl.flash_attention_triton
    for head_dim in args.head_dims:
        cls = 64 if head_dim <= 64 else 128
        batch, heads = TOKENS // seq_len, WIDTH // head_dim
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, grad = (torch.randn(batch, heads, seq_len, head_dim, device="cuda", dtype=torch.float16,
                                     generator=gen) for _ in range(4))
        for kernel, candidates in SWEEP.items():
            totals = {}
            for tiles in candidates:
                ft.GPU_TILES[(kernel, cls)] = tiles
                total = 0.0
                for causal in (False, True):
                    try:
                        if kernel == "fwd":
                            total += gpu_time(lambda: ft._forward(q, k, v, causal, None, None))
                        else:
                            out, lse = ft._forward(q, k, v, causal, None, None)
                            total += gpu_time(lambda: ft._backward(q, k, v, out, lse, grad, causal, None, None))
                    except Exception as e:  # a tile that does not fit in shared memory / registers
                        print(f"  {kernel} D={head_dim} {tiles}: failed ({str(e).splitlines()[0][:80]})")
                        total = math.inf
                        break
                totals[tiles] = total
                print(f"  sweep {kernel:4s} D={head_dim:3d} {tiles}: {total * 1e3:8.3f} ms (causal + full)",
                      flush=True)
            ft.GPU_TILES[(kernel, cls)] = min(totals, key=totals.get)
    print("GPU_TILES =", dict(sorted(ft.GPU_TILES.items())))


def ratios(rows):
    """{(dtype, D, causal, L, mode): {method: tflops}} and the ratio table."""
    table = {}
    for r in rows:
        key = (r["dtype"], int(r["head_dim"]), str(r["causal"]) == "True", int(r["seq_len"]), r["mode"])
        table.setdefault(key, {})[r["method"]] = float(r["tflops"])
    return table


def report(rows):
    from coursekit.bench import print_table

    table = ratios(rows)
    lines, misses = [], []
    for (dtype, d, causal, seq_len, mode), t in sorted(table.items()):
        ours, fa2, cudnn = t.get("ours"), t.get("fa2"), t.get("cudnn")
        r_fa2 = ours / fa2 if ours and fa2 else math.nan
        r_cudnn = ours / cudnn if ours and cudnn else math.nan
        target = 1.1 if mode == "fwd" else 0.9
        verdict = ""
        if seq_len >= 4096 and not math.isnan(r_fa2):
            verdict = "ok" if r_fa2 >= target else f"MISS (< {target})"
            if r_fa2 < target:
                misses.append((dtype, d, causal, seq_len, mode, r_fa2))
        lines.append([dtype, d, causal, seq_len, mode, f"{ours or math.nan:.0f}", f"{fa2 or math.nan:.0f}",
                      f"{cudnn or math.nan:.0f}", f"{t.get('naive', math.nan):.0f}", f"{r_fa2:.2f}",
                      f"{r_cudnn:.2f}", verdict])
    print_table(["dtype", "D", "causal", "L", "mode", "ours", "fa2", "cudnn", "naive", "ours/fa2", "ours/cudnn",
                 "target (L>=4k)"], lines)
    print(f"\ntargets: fwd >= 1.1x fa2, fwd+bwd >= 0.9x fa2 at L >= 4k; {len(misses)} point(s) missed")


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = ratios(rows)
    dtypes = sorted({k[0] for k in table})
    panels = [(d, c, m) for m in ("fwd", "fwd+bwd") for d in (64, 128) for c in (False, True)]
    fig, axes = plt.subplots(len(dtypes) * 2, 4, figsize=(18, 4.2 * len(dtypes) * 2), squeeze=False)
    styles = {"ours": ("tab:red", "o"), "fa2": ("tab:blue", "s"), "cudnn": ("tab:green", "^"), "naive": ("0.5", "x")}
    for row, dtype in enumerate(dtypes):
        for i, (d, causal, mode) in enumerate(panels):
            ax = axes[row * 2 + i // 4][i % 4]
            keys = sorted(k for k in table if k[0] == dtype and k[1] == d and k[2] == causal and k[4] == mode)
            for method, (color, marker) in styles.items():
                pts = [(k[3], table[k][method]) for k in keys if method in table[k]]
                if pts:
                    ax.plot(*zip(*pts), marker=marker, color=color, label=method)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{dtype} {mode} D={d} {'causal' if causal else 'full'}", fontsize=10)
            ax.set_xlabel("sequence length")
            ax.set_ylabel("TFLOP/s")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"attention throughput, {TOKENS} tokens per point, {WIDTH}-wide (H = {WIDTH}/D)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, csv_name="flash_attention_gpu.csv")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--causal", type=lambda s: s == "true", nargs="+", default=[False, True],
                        help="true/false values to run")
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"])
    parser.add_argument("--methods", nargs="+", default=["ours", "fa2", "cudnn", "naive"])
    parser.add_argument("--naive-max", type=int, default=4096, help="longest L for the eager baseline")
    parser.add_argument("--sweep", action="store_true", help="first pick the reference's tile sizes (see sweep)")
    args = parser.parse_args()

    if args.plot:
        rows = read_csv(args.plot)
        report(rows)
        plot(rows, args.plot.with_suffix(".png"))
        return
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    print(f"{device_name()}  torch {torch.__version__}")
    if args.sweep:
        from coursekit.impl import Implementation
        sweep(Implementation(args.impl), args)
    rows = []
    with CsvLog(args.out / "flash_attention_gpu.csv" if args.out else None, fields=FIELDS) as log:
        for row in run(args):   # written as measured: an interrupted run keeps what it measured
            rows.append(row)
            log.write(row)
    report(rows)


if __name__ == "__main__":
    main()
