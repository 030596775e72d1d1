"""L13 benchmark: causal linear attention in Triton vs FlashAttention (SDPA) vs the PyTorch chunked form (GPU).

    python benchmarks/linear_attention_gpu.py --impl solutions --out benchmarks/results
    python benchmarks/linear_attention_gpu.py --impl solutions --sweep         # chunk size and value block first
    python benchmarks/linear_attention_gpu.py --impl solutions --backward --lengths 4096 16384 65536 --out ...
    python benchmarks/linear_attention_gpu.py --plot benchmarks/results/linear_attention_gpu.csv
    TRITON_INTERPRET=1 python benchmarks/linear_attention_gpu.py --impl solutions --smoke   # CPU check, tiny sizes

For B = 1, H = 16, D in {64, 128}, bfloat16, L = 1k .. 128k, it times in the
same run, on the same q, k, v (methods interleaved, each point --repeats times):

    triton         impl.linear_attention_triton.triton_linear_attention_chunked (chunk 64,
                   value block from choose_block_dv): O(L) work
    sdpa_flash     F.scaled_dot_product_attention(is_causal=True) pinned to the FlashAttention backend
    sdpa_cudnn     the same pinned to cuDNN's attention (left out where it rejects the shape)
                   softmax attention, O(L^2) work: the baseline is the faster of the two at each point
    torch_chunked  impl.linear_attention.linear_attention_chunked (chunk 256: it is launch-bound,
                   ~10 kernels per chunk, so larger chunks are its better point), L <= --torch-max-len

They do not compute the same function (linear attention is not softmax
attention): the question is what each costs per token as L grows, and where
the O(L) line crosses the O(L^2) one. Reported per point: the median time and
its [min, max] over the repeats, tokens/s (B * L / time), and ratio =
time(best SDPA) / time(method) (> 1: faster than FlashAttention). The script
prints, per D, between which lengths triton overtakes SDPA (interpolated on the
log-log lines), and the max error of the bf16 triton output against the float32
PyTorch chunked form at one point. Each timing is coursekit.bench.gpu_time (CUDA
events, L2 flushed, median over ~100 ms).

Writes linear_attention_gpu.csv as it goes (no matplotlib needed on the GPU);
--plot draws linear_attention_gpu.png from a CSV.
"""
import argparse
import functools
import math
import os
import statistics
from pathlib import Path

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
import torch
import torch.nn.functional as F

from coursekit.bench import CsvLog, add_common_args, device_name, gpu_time, print_table, read_csv, spread, \
    time_interleaved
from coursekit.impl import Implementation

CSV_NAME, PNG_NAME = "linear_attention_gpu.csv", "linear_attention_gpu.png"
BACKWARD_CSV_NAME = "linear_attention_gpu_backward.csv"
FIELDS = ["batch", "heads", "seq_len", "head_dim", "dtype", "method", "chunk_size", "block_dv", "us", "us_min",
          "us_max", "runs", "tokens_per_s", "ratio_vs_sdpa", "device"]
BATCH, HEADS = 1, 16
LENGTHS = [1024 * 2 ** i for i in range(8)]      # 1k .. 128k
HEAD_DIMS = (64, 128)
CHUNK, TORCH_CHUNK = 64, 256


def sdpa_call(backend, q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    pinned = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION}[backend]

    def call():
        with sdpa_kernel(pinned):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    try:
        call()
        torch.cuda.synchronize()
    except RuntimeError as err:  # a backend that does not take this shape / GPU
        print(f"  {backend} left out at L = {q.shape[2]}, D = {q.shape[3]}: {str(err).splitlines()[0][:120]}")
        return None
    return call


def inputs(length, head_dim, *, device, dtype=torch.bfloat16, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(BATCH, HEADS, length, head_dim, generator=gen, device=device, dtype=dtype)
            for _ in range(3)]


TIMING = dict(warmup_ms=25, rep_ms=100)  # gpu_time's budget per timing; --warmup-ms / --rep-ms change it


def timer(fn):
    return gpu_time(fn, **TIMING)


def measure(impl, length, head_dim, *, repeats, torch_max_len):
    lat = impl.linear_attention_triton
    q, k, v = inputs(length, head_dim, device="cuda")
    calls = {"triton": lambda: lat.triton_linear_attention_chunked(q, k, v, chunk_size=CHUNK)}
    for backend in ("sdpa_flash", "sdpa_cudnn"):
        call = sdpa_call(backend, q, k, v)
        if call is not None:
            calls[backend] = call
    if length <= torch_max_len:
        calls["torch_chunked"] = lambda: impl.linear_attention.linear_attention_chunked(q, k, v,
                                                                                        chunk_size=TORCH_CHUNK)
    for call in calls.values():  # compile / autotune / first-call work out of the timings
        call()
    torch.cuda.synchronize()
    times = time_interleaved(calls, repeats=repeats, timer=timer)
    best_sdpa = min((statistics.median(t) for name, t in times.items() if name.startswith("sdpa")), default=None)
    block_dv = lat.choose_block_dv(BATCH * HEADS, head_dim, torch.cuda.get_device_properties(0).multi_processor_count)
    rows = []
    for name, t in times.items():
        row = dict(batch=BATCH, heads=HEADS, seq_len=length, head_dim=head_dim, dtype="bfloat16", method=name,
                   chunk_size={"triton": CHUNK, "torch_chunked": TORCH_CHUNK}.get(name, ""),
                   block_dv=block_dv if name == "triton" else "", **spread(t), device=device_name())
        row["tokens_per_s"] = f"{BATCH * length / (row['us'] * 1e-6):.4g}"
        row["ratio_vs_sdpa"] = f"{best_sdpa * 1e6 / row['us']:.3f}" if best_sdpa else ""
        rows.append(row)
    del q, k, v
    torch.cuda.empty_cache()
    return rows


def measure_backward(impl, length, head_dim, *, repeats):
    """Forward + backward of triton (its backward kernels) and of the SDPA backends, at one point."""
    lat = impl.linear_attention_triton
    q, k, v = (t.requires_grad_() for t in inputs(length, head_dim, device="cuda"))
    grad_out = inputs(length, head_dim, device="cuda", seed=2)[0]

    def fwd_bwd(fn):
        def call():
            q.grad = k.grad = v.grad = None
            fn().backward(grad_out)
        return call
    calls = {"triton": fwd_bwd(lambda: lat.triton_linear_attention_chunked(q, k, v, chunk_size=CHUNK))}
    for backend in ("sdpa_flash", "sdpa_cudnn"):
        fwd = sdpa_call(backend, q, k, v)
        if fwd is not None:
            calls[backend] = fwd_bwd(fwd)
    for call in list(calls):
        try:
            calls[call]()
        except RuntimeError as err:
            print(f"  {call} fwd+bwd left out: {str(err).splitlines()[0][:120]}")
            del calls[call]
    torch.cuda.synchronize()
    times = time_interleaved(calls, repeats=repeats)
    best_sdpa = min((statistics.median(t) for name, t in times.items() if name.startswith("sdpa")), default=None)
    rows = []
    for name, t in times.items():
        row = dict(batch=BATCH, heads=HEADS, seq_len=length, head_dim=head_dim, dtype="bfloat16",
                   method=f"{name}_fwd_bwd", chunk_size=CHUNK if name == "triton" else "", block_dv="",
                   **spread(t), device=device_name())
        row["tokens_per_s"] = f"{BATCH * length / (row['us'] * 1e-6):.4g}"
        row["ratio_vs_sdpa"] = f"{best_sdpa * 1e6 / row['us']:.3f}" if best_sdpa else ""
        rows.append(row)
    del q, k, v, grad_out
    torch.cuda.empty_cache()
    return rows


def crossing(rows, head_dim):
    """(L below, L above, interpolated L) where triton's time falls below the best SDPA's, or None."""
    by_len = {}
    for r in rows:
        if r["head_dim"] == head_dim:
            by_len.setdefault(r["seq_len"], {})[r["method"]] = float(r["us"])
    points = []
    for length in sorted(by_len):
        m = by_len[length]
        sdpa = [t for name, t in m.items() if name.startswith("sdpa")]
        if "triton" in m and sdpa:
            points.append((length, m["triton"], min(sdpa)))
    for (l0, a0, b0), (l1, a1, b1) in zip(points, points[1:]):
        if a0 >= b0 and a1 < b1:  # log(time ratio) is ~linear in log L between two points: interpolate its zero
            r0, r1 = math.log(a0 / b0), math.log(a1 / b1)
            return l0, l1, round(math.exp(math.log(l0) + (math.log(l1) - math.log(l0)) * r0 / (r0 - r1)))
    if points and points[0][1] < points[0][2]:
        return None, points[0][0], None  # faster already at the shortest length
    return None


def max_error(impl, length=8192, head_dim=64):
    """max |triton bf16 - PyTorch chunked float32| on the same (bf16-valued) inputs, at one point."""
    q, k, v = inputs(length, head_dim, device="cuda", seed=1)
    got = impl.linear_attention_triton.triton_linear_attention_chunked(q, k, v).float()
    want = impl.linear_attention.linear_attention_chunked(q.float(), k.float(), v.float(), chunk_size=TORCH_CHUNK)
    err = (got - want).abs().max().item()
    print(f"max |triton bf16 - PyTorch chunked fp32| at L = {length}, D = {head_dim}: {err:.3g} "
          f"(|out| max {want.abs().max().item():.3g}; bf16 half-ulp there {want.abs().max().item() * 2 ** -9:.3g})")
    return err


SWEEP_CONFIGS = [(32, 16, 4), (64, 16, 4), (128, 16, 4), (64, 32, 4), (64, 64, 4), (64, 16, 8),
                 (128, 16, 8)]  # (chunk_size, block_dv, num_warps)


def sweep(impl, lengths=(32768,)):
    """Chunk size x value block x warps of the Triton kernel, at D = 64 and 128: what the defaults come from."""
    lat = impl.linear_attention_triton
    default_config = dict(lat.GPU_CONFIG)
    rows = []
    for head_dim in HEAD_DIMS:
        for length in lengths:
            q, k, v = inputs(length, head_dim, device="cuda")

            def call(chunk, block_dv, warps):
                lat.GPU_CONFIG.update(num_warps=warps)  # read by the launcher at each call
                return lat.triton_linear_attention_chunked(q, k, v, chunk_size=chunk, block_dv=block_dv)
            calls = {}
            for config in SWEEP_CONFIGS:
                try:
                    call(*config)
                    calls[config] = functools.partial(call, *config)
                except Exception as err:  # a config that does not compile (registers, shared memory)
                    print(f"  chunk {config[0]} block_dv {config[1]} warps {config[2]} failed: "
                          f"{type(err).__name__}: {str(err)[:160]}")
            torch.cuda.synchronize()
            times = time_interleaved(calls, repeats=3)
            for (chunk, block_dv, warps), t in sorted(times.items(), key=lambda item: statistics.median(item[1])):
                s = spread(t)
                rows.append([head_dim, length, chunk, block_dv, warps, s["us"], f"[{s['us_min']}, {s['us_max']}]"])
    lat.GPU_CONFIG.clear()
    lat.GPU_CONFIG.update(default_config)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    chosen = {d: lat.choose_block_dv(BATCH * HEADS, d, sms) for d in HEAD_DIMS}
    print(f"sweep (B = {BATCH}, H = {HEADS}, bf16; defaults {default_config}, chunk {CHUNK}, block_dv {chosen}):")
    print_table(["D", "L", "chunk", "block_dv", "warps", "us", "[min, max]"], rows)


def smoke(impl):
    """Every code path at tiny sizes, checked against the PyTorch form: on the CPU under
    TRITON_INTERPRET=1, or on a GPU (a first compile check there, float32 and bfloat16)."""
    device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    dtypes = (torch.float32,) if device == "cpu" else (torch.float32, torch.bfloat16)
    worst = 0.0
    for dtype in dtypes:
        for chunk, head_dim in ((16, 16), (64, 64)):
            q, k, v = (torch.randn(1, 2, 70, head_dim, device=device).to(dtype) for _ in range(3))
            got = impl.linear_attention_triton.triton_linear_attention_chunked(q, k, v, chunk_size=chunk)
            want = impl.linear_attention.linear_attention_chunked(q.float(), k.float(), v.float(), chunk_size=chunk)
            err = (got.float() - want).abs().max().item()
            print(f"smoke on {device}: L = 70, D = {head_dim}, chunk {chunk}, {dtype}: "
                  f"max |triton - PyTorch chunked fp32| = {err:.3g}")
            worst = max(worst, err / (1e-4 if dtype == torch.float32 else 3e-2))
    rows = [dict(seq_len=1024, head_dim=16, method="triton", us=3.0), dict(seq_len=1024, head_dim=16, method="sdpa_flash",
            us=2.0), dict(seq_len=2048, head_dim=16, method="triton", us=5.0),
            dict(seq_len=2048, head_dim=16, method="sdpa_flash", us=8.0)]
    print(f"smoke: crossing helper on made-up rows (3 vs 2 us at 1k, 5 vs 8 at 2k): {crossing(rows, 16)}")
    if worst > 1:
        raise SystemExit("smoke: the kernel disagrees with the PyTorch chunked form")


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dims = sorted({r["head_dim"] for r in rows})
    fig, axes = plt.subplots(1, len(dims), figsize=(6.5 * len(dims), 4.6), squeeze=False)
    for ax, head_dim in zip(axes[0], dims):
        for method in ("triton", "sdpa_flash", "sdpa_cudnn", "torch_chunked"):
            pts = sorted((r["seq_len"], r["us"], r["us_min"], r["us_max"]) for r in rows
                         if r["head_dim"] == head_dim and r["method"] == method)
            if pts:
                x, y, lo, hi = zip(*pts)
                ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]],
                            marker="o", capsize=2, label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("us per call (median of repeats, [min, max])")
        ax.set_title(f"B={BATCH}, H={HEADS}, D={head_dim}, bf16, causal ({rows[0].get('device', '')})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]), csv_name=CSV_NAME)
    parser.add_argument("--smoke", action="store_true", help="CPU under TRITON_INTERPRET=1, tiny sizes, no timing")
    parser.add_argument("--sweep", action="store_true", help="time chunk sizes x value blocks of the Triton kernel")
    parser.add_argument("--backward", action="store_true",
                        help=f"time forward + backward (triton vs SDPA) instead, into {BACKWARD_CSV_NAME}")
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS, help="sequence lengths (default 1k..128k)")
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(HEAD_DIMS))
    parser.add_argument("--max-len", nargs="+", default=[], metavar="D:L",
                        help="skip lengths above L for head dim D (e.g. 128:65536: SDPA at 128k, D = 128 is slow to time)")
    parser.add_argument("--warmup-ms", type=float, default=25, help="gpu_time warm-up budget per timing (default 25)")
    parser.add_argument("--rep-ms", type=float, default=100, help="gpu_time budget per timing (default 100)")
    parser.add_argument("--no-plot", action="store_true", help="write the CSV only (draw later with --plot)")
    parser.add_argument("--torch-max-len", type=int, default=32768,
                        help="time the PyTorch chunked form up to this L (it is ~100x slower; default 32768)")
    args = parser.parse_args()
    if args.plot:
        plot(read_csv(args.plot), args.plot.with_name(PNG_NAME))
        return
    impl = Implementation(args.impl)
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
            raise SystemExit("--smoke without a GPU needs TRITON_INTERPRET=1")
        smoke(impl)
        return
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run on the GPU machine, or use --smoke (CPU, TRITON_INTERPRET=1, tiny sizes)")
    print(f"{device_name()}, torch {torch.__version__}, impl {impl.name}")
    TIMING.update(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)
    max_len = {int(d): int(n) for d, n in (item.split(":") for item in args.max_len)}
    if args.sweep:
        sweep(impl)
        return
    if args.backward:
        with CsvLog(args.out / BACKWARD_CSV_NAME if args.out else None, FIELDS) as log:
            for head_dim in args.head_dims:
                for length in args.lengths:
                    new = measure_backward(impl, length, head_dim, repeats=args.repeats)
                    log.write(new)
                    print_table(["L", "D", "method", "us", "[min, max]", "tokens/s", "vs SDPA"],
                                [[r["seq_len"], r["head_dim"], r["method"], r["us"], f"[{r['us_min']}, {r['us_max']}]",
                                  r["tokens_per_s"], r["ratio_vs_sdpa"]] for r in new])
        return
    max_error(impl)  # first: one point, and it compiles the D = 64 kernel the timings use
    rows = []
    with CsvLog(args.out / CSV_NAME if args.out else None, FIELDS) as log:
        for head_dim in args.head_dims:
            for length in args.lengths:
                if length > max_len.get(head_dim, length):
                    continue
                new = measure(impl, length, head_dim, repeats=args.repeats, torch_max_len=args.torch_max_len)
                log.write(new)
                rows += new
                print_table(["L", "D", "method", "us", "[min, max]", "tokens/s", "vs SDPA"],
                            [[r["seq_len"], r["head_dim"], r["method"], r["us"], f"[{r['us_min']}, {r['us_max']}]",
                              r["tokens_per_s"], r["ratio_vs_sdpa"]] for r in new])
    for head_dim in args.head_dims:
        cross = crossing(rows, head_dim)
        if cross is None:
            print(f"D = {head_dim}: triton never overtakes SDPA in L = {args.lengths[0]} .. {args.lengths[-1]}")
        elif cross[0] is None:
            print(f"D = {head_dim}: triton is faster than SDPA already at L = {cross[1]}")
        else:
            print(f"D = {head_dim}: triton overtakes SDPA between L = {cross[0]} and {cross[1]} "
                  f"(log-log interpolation: L ~ {cross[2]})")
    if args.out and not args.no_plot:
        try:
            plot(rows, args.out / PNG_NAME)
        except ImportError:
            print(f"matplotlib not installed: redraw elsewhere with --plot {args.out / CSV_NAME}")


if __name__ == "__main__":
    main()
