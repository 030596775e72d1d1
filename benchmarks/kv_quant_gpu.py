"""L12 benchmark: one decoding step over an int8 / int4 KV cache, dequantized inside the kernel (GPU).

    python benchmarks/kv_quant_gpu.py --impl solutions --out benchmarks/results
    python benchmarks/kv_quant_gpu.py --impl solutions --smoke            # two small points, seconds
    python benchmarks/kv_quant_gpu.py --impl solutions --sweep --out ...  # tune the tiles first
    python benchmarks/kv_quant_gpu.py --plot benchmarks/results/kv_quant_gpu.csv

For B in {1, 8}, H = 32 query heads, Hkv = 8 KV heads, D = 128, cache lengths
T = 4k .. 128k, a bfloat16 cache and its quantized copies (keys per channel in
groups of --key-group tokens, values per token over the whole head_dim, as
QuantizedKVCache stores them), it times in the same run, on the same q:

    int8, int4    impl.kv_quant_triton.triton_quantized_decode_attention (codes read, dequantized in registers)
    int8_fold, int4_fold
                  the same with kv_quant_triton.FOLD_STATISTICS: scales and zeros folded into q and p
    bf16          impl.decode_attention_triton.triton_decode_attention (L10's kernel, the same split-KV code)
    flash, cudnn  F.scaled_dot_product_attention pinned to that backend, enable_gqa (left out if it refuses)

Every call is replayed from a CUDA graph: an eager call pays ~100 us of host
work (Python, checks, Triton's launcher), more than the GPU needs for most of
these caches, and a decoder replays graphs. Each point is timed --repeats times,
methods interleaved (coursekit.bench.time_interleaved; each timing is gpu_time:
CUDA events, L2 flushed, median over --rep-ms). The CSV keeps the median and
the min and max of the repeats.

Bytes read per step: q + codes + scales + zero points of k and v (int8, int4),
q + K + V (bf16, SDPA). GB/s = those bytes / median time. "vs_bf16" is the bf16
kernel's time / this method's (> 1: faster). The error columns: max |out - ref|
against attention over the float cache (what quantization costs) and, for the
quantized kernels, against attention over the dequantized cache (the kernel's own
error; float32 references from SDPA's math on the same inputs).
Writes kv_quant_gpu.csv as it goes; --plot draws kv_quant_gpu.png from a CSV.
"""
import argparse
import math
import time
from pathlib import Path

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
import torch
import torch.nn.functional as F

from coursekit.bench import (CsvLog, add_common_args, capture_graph, device_name, gpu_time, read_csv, spread,
                             time_interleaved)

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
FIELDS = ["batch", "heads", "kv_heads", "seq_len", "head_dim", "method", "us", "us_min", "us_max", "runs",
          "vs_bf16", "bytes_read", "gbps", "err_vs_float", "err_vs_dequant", "device"]




def reference(q, k, v):
    """float32 attention of q (B, H, 1, D) over k, v (B, Hkv, T, D), the G = H // Hkv heads of a group
    batched against their KV head (no repeated copy of the cache: at B = 8, T = 128k that would be 34 GB)."""
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    qg = q.float().reshape(B, Hkv, H // Hkv, D)                                   # head h = hkv * G + g
    scores = torch.einsum("bkgd,bktd->bkgt", qg, k.float()) / math.sqrt(D)      # (B, Hkv, G, T)
    out = torch.einsum("bkgt,bktd->bkgd", torch.softmax(scores, dim=-1), v.float())
    return out.reshape(B, H, 1, D)


def measure_point(impl, batch, seq_len, args):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kq, kt, dat = impl.kv_quant, impl.kv_quant_triton, impl.decode_attention_triton
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (batch, KV_HEADS, seq_len, HEAD_DIM)
    q = torch.randn(batch, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    k[..., :4] += 8.0  # a few outlier key channels, as real keys have (why keys are grouped per channel)
    v = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    quantized = {f"int{b}": (kq.quantize(k, b, dim=-2, group_size=args.key_group), kq.quantize(v, b, dim=-1))
                 for b in args.bits}
    want = reference(q, k, v)
    q_bytes = q.nbytes

    fns, nbytes, errors = {}, {}, {}
    def quantized_call(kx, vx, fold):
        def call():  # the flag is read by the launcher: a graph captured with it set replays the folded kernel
            kt.FOLD_STATISTICS = fold
            try:
                return kt.triton_quantized_decode_attention(q, kx, vx)[0]
            finally:
                kt.FOLD_STATISTICS = False
        return call

    for name, (kx, vx) in quantized.items():
        dq = reference(q, kq.dequantize(kx), kq.dequantize(vx))
        for fold in (False, True) if hasattr(kt, "FOLD_STATISTICS") and args.fold else (False,):
            method = name + ("_fold" if fold else "")
            fns[method] = quantized_call(kx, vx, fold)
            nbytes[method] = q_bytes + kt.quantized_kv_bytes(kx, vx)
            try:
                out = fns[method]()
                errors[method] = ((out.float() - want).abs().max().item(), (out.float() - dq).abs().max().item())
            except Exception as e:  # printed by the capture below, which fails the same way
                errors[method] = (math.nan, math.nan)
        del dq
    fns["bf16"] = lambda: dat.triton_decode_attention(q, k, v)[0]
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        def sdpa(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        fns[name] = sdpa
    for name in ("bf16", "flash", "cudnn"):
        nbytes[name] = q_bytes + k.nbytes + v.nbytes
    calls = {}
    for name, fn in fns.items():
        try:
            if name not in errors:
                errors[name] = ((fn().float() - want).abs().max().item(), math.nan)
            calls[name] = capture_graph(fn).replay
        except Exception as e:  # a backend that refuses this shape, or a capture that fails
            print(f"    {name:6s} left out: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            torch.cuda.synchronize()
    timer = lambda fn: gpu_time(fn, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)
    times = time_interleaved(calls, repeats=args.repeats, timer=timer)
    rows = []
    bf16_us = spread(times["bf16"])["us"] if "bf16" in times else math.nan
    for name, ts in times.items():
        s = spread(ts)
        rows.append(dict(batch=batch, heads=HEADS, kv_heads=KV_HEADS, seq_len=seq_len, head_dim=HEAD_DIM,
                         method=name, **s, vs_bf16=round(bf16_us / s["us"], 3), bytes_read=nbytes[name],
                         gbps=round(nbytes[name] / (s["us"] * 1e-6) / 1e9, 1),
                         err_vs_float=f"{errors[name][0]:.2e}", err_vs_dequant=f"{errors[name][1]:.2e}",
                         device=device_name()))
    del q, k, v, quantized, calls
    torch.cuda.empty_cache()
    return rows


FALLBACK_CONFIGS = (dict(BLOCK_N=128, num_warps=8, num_stages=3), dict(BLOCK_N=64, num_warps=4, num_stages=3),
                    dict(BLOCK_N=64, num_warps=4, num_stages=2))


def pick_config(impl, args):
    """Keep the committed GPU_CONFIG if it compiles and is right on a small cache, else the first of
    FALLBACK_CONFIGS that does (a failure is printed in full: it is the compile error to fix)."""
    import traceback
    kq, kt = impl.kv_quant, impl.kv_quant_triton
    gen = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(2, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(2, KV_HEADS, 1000, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(2, KV_HEADS, 1000, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    committed = dict(kt.GPU_CONFIG)
    for config in [committed] + [c for c in FALLBACK_CONFIGS if c != committed]:
        kt.GPU_CONFIG = config
        try:
            for bits in args.bits:
                kx, vx = kq.quantize(k, bits, dim=-2, group_size=args.key_group), kq.quantize(v, bits, dim=-1)
                want = reference(q, kq.dequantize(kx), kq.dequantize(vx))
                err = (kt.triton_quantized_decode_attention(q, kx, vx)[0].float() - want).abs().max().item()
                if not err < 0.05:
                    raise AssertionError(f"int{bits}: max |out - attention over the dequantized cache| = {err}")
            print(f"GPU_CONFIG = {config}" + ("" if config == committed else f" (the committed {committed} failed)"))
            return
        except Exception:
            print(f"config {config} failed:")
            traceback.print_exc()
    kt.GPU_CONFIG = committed
    print("no config worked: the quantized rows will be missing")


def sweep(impl, args):
    """Time the quantized kernel over tile sizes, warps and pipeline stages at two shapes; print the
    best configs and leave the best overall in GPU_CONFIG for the rest of the run."""
    kq, kt = impl.kv_quant, impl.kv_quant_triton
    configs = [dict(BLOCK_N=n, num_warps=w, num_stages=st) for n, w, st in ((64, 4, 3), (64, 4, 4), (128, 4, 3),
                                                                              (128, 8, 3))]
    totals = {}
    for batch, seq_len in ((1, 65536), (8, 32768)):
        gen = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(batch, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
        k = torch.randn(batch, KV_HEADS, seq_len, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
        for bits in args.bits:
            kx, vx = kq.quantize(k, bits, dim=-2, group_size=args.key_group), kq.quantize(k, bits, dim=-1)
            nbytes = q.nbytes + kt.quantized_kv_bytes(kx, vx)
            for config in configs:
                kt.GPU_CONFIG = config
                try:
                    t = gpu_time(capture_graph(lambda: kt.triton_quantized_decode_attention(q, kx, vx)).replay, warmup_ms=5,
                                 rep_ms=20)
                except Exception as e:
                    print(f"  sweep {config}: failed ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
                    continue
                key = tuple(config.values())
                totals.setdefault(key, []).append(t)
                print(f"  sweep B={batch} T={seq_len} int{bits} BLOCK_N={config['BLOCK_N']:3d} "
                      f"warps={config['num_warps']} stages={config['num_stages']}: {t * 1e6:8.1f} us "
                      f"{nbytes / t / 1e9:6.0f} GB/s", flush=True)
    complete = {key: sum(ts) for key, ts in totals.items() if len(ts) == max(map(len, totals.values()))}
    if complete:
        n, w, st = min(complete, key=complete.get)
        kt.GPU_CONFIG = dict(BLOCK_N=n, num_warps=w, num_stages=st)
    print("GPU_CONFIG =", kt.GPU_CONFIG, flush=True)


def report(rows):
    """One line per (B, T): each method's median us, its ratio to bf16 and its GB/s."""
    methods = [m for m in ("int8", "int8_fold", "int4", "int4_fold", "bf16", "flash", "cudnn")
               if any(r["method"] == m for r in rows)]
    print("\nsummary (us median, x vs bf16, GB/s of bytes read):")
    print(f"{'B':>2} {'T':>7}  " + "  ".join(f"{m:>24}" for m in methods))
    for b, t in sorted({(r["batch"], r["seq_len"]) for r in rows}):
        cells = {r["method"]: r for r in rows if r["batch"] == b and r["seq_len"] == t}
        print(f"{b:2d} {t:7d}  " + "  ".join(
            f"{cells[m]['us']:8.1f} x{cells[m]['vs_bf16']:4.2f} {cells[m]['gbps']:6.0f}" if m in cells else f"{'-':>24}"
            for m in methods))


def plot(csv_path, png_path):
    """us per step (left) and GB/s of bytes read (right) against T, one line per method and B."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    batches = sorted({r["batch"] for r in rows})
    style = {"int4": "tab:green", "int4_fold": "lime", "int8": "tab:olive", "int8_fold": "gold", "bf16": "tab:blue",
             "flash": "tab:purple", "cudnn": "tab:red"}
    methods = [m for m in style if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for b, ls in zip(batches, ("-", "--", ":")):
        for m in methods:
            pts = sorted((r["seq_len"], r["us"], r["gbps"]) for r in rows if r["batch"] == b and r["method"] == m)
            if not pts:
                continue
            t, us, gbps = zip(*pts)
            axes[0].plot(t, us, "o" + ls, color=style[m], ms=3, label=f"{m}, B={b}")
            axes[1].plot(t, gbps, "o" + ls, color=style[m], ms=3, label=f"{m}, B={b}")
    for ax, label in zip(axes, ("us per decode step (one layer)", "GB/s of bytes read")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("cache length T")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7, ncol=2)
    device = rows[0]["device"] if rows else ""
    fig.suptitle(f"decode attention over a quantized cache, H={HEADS}, Hkv={KV_HEADS}, D={HEAD_DIM}, {device}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    print(f"wrote {png_path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, csv_name="kv_quant_gpu.csv")
    parser.add_argument("--smoke", action="store_true", help="two small points, one repeat: checks the script runs")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768, 65536, 131072])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    parser.add_argument("--key-group", type=int, default=128, help="tokens per key group (per channel)")
    parser.add_argument("--warmup-ms", type=float, default=10)
    parser.add_argument("--rep-ms", type=float, default=40)
    parser.add_argument("--sweep", action="store_true", help="tune the quantized kernel's tiles first")
    parser.add_argument("--no-fold", dest="fold", action="store_false",
                        help="do not time the folded-statistics variant (the \"_fold\" rows)")
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, Path(args.plot).with_suffix(".png"))
        return
    if args.smoke:
        args.batches, args.lengths, args.repeats, args.rep_ms = [1], [4096, 16384], 1, 10
    if not torch.cuda.is_available():
        raise SystemExit("kv_quant_gpu.py needs a CUDA GPU")

    from coursekit.impl import Implementation
    impl = Implementation(args.impl)
    print(f"{device_name()}, torch {torch.__version__}, triton {__import__('triton').__version__}")
    with torch.no_grad():
        pick_config(impl, args)
        if args.sweep:
            sweep(impl, args)
    csv_path = args.out / "kv_quant_gpu.csv" if args.out else None
    rows, start = [], time.time()
    with CsvLog(csv_path, FIELDS) as log, torch.no_grad():
        for batch in args.batches:
            for seq_len in args.lengths:
                print(f"B={batch} T={seq_len} ({time.time() - start:.0f} s)", flush=True)
                point = measure_point(impl, batch, seq_len, args)
                for r in point:
                    print(f"    {r['method']:6s} {r['us']:9.1f} us [{r['us_min']:.1f}, {r['us_max']:.1f}]  "
                          f"x{r['vs_bf16']:.2f} vs bf16  {r['gbps']:7.0f} GB/s of {r['bytes_read'] / 1e6:8.1f} MB  "
                          f"err vs float {r['err_vs_float']}, vs dequantized {r['err_vs_dequant']}", flush=True)
                log.write(point)
                rows += point
    report(rows)
    if csv_path:
        try:
            plot(csv_path, csv_path.with_suffix(".png"))
        except ImportError:
            print("matplotlib not installed: draw the plot later with --plot")


if __name__ == "__main__":
    main()
