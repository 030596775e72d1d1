"""L10 benchmark: one decoding step (Lq = 1) against a long KV cache, as GB/s of cache read (GPU).

    python benchmarks/decode_attention_gpu.py --impl solutions --out benchmarks/results
    python benchmarks/decode_attention_gpu.py --impl solutions --sweep          # tune the split kernel first
    python benchmarks/decode_attention_gpu.py --plot benchmarks/results/decode_attention_gpu.csv

For B in {1, 8, 64}, H = 32 query heads with Hkv in {32 (MHA), 8 (GQA), 1 (MQA)}
KV heads, D = 128, cache lengths T = 1k .. 128k, bfloat16, it times in the same
run, on the same q, k, v:

    ours      impl.decode_attention_triton.triton_decode_attention (split-KV, GQA packed)
    flash, efficient, cudnn, math
              F.scaled_dot_product_attention pinned to each SDPA backend, with
              enable_gqa when Hkv < H (a backend that rejects the shape is left out)
    flex      torch.compile(flex_attention), which takes its decoding kernel for short Lq
    l05       impl.flash_attention_triton.triton_flash_attention_forward (L05's kernel)
    copy      dst.copy_(k); dst.copy_(v): a device-to-device copy of the same bytes, the roof

and then each of ours, the fused SDPA backends, L05's kernel and the copy again,
replayed from a CUDA graph ("<method>_graph" rows): an eager call pays the host's
launch work every time (Python, checks, Triton's launcher: 100-170 us per call on
the H200 host measured here, more than the GPU needs for a cache below ~64 MB);
a decoder that replays graphs pays none of it, so the graph rows are the GPU's time.

A decode step must read the whole cache, K and V: 2 * B * Hkv * T * D * 2 bytes.
Every method's bandwidth counts exactly those bytes (what it writes is B * H * D,
negligible); the copy's counts its read AND its write (2x the cache), so it is
what HBM sustains when it streams, and ours / copy is the fraction of the
machine's bandwidth the kernel reaches.

The roof is the faster of the two copies (eager or graph). Each point is timed
`--repeats` times (default 5; coursekit.bench.time_interleaved), the methods
interleaved (so drift of a shared GPU hits them alike); each timing is coursekit.bench.gpu_time (CUDA
events, L2 flushed before each call, median over ~100 ms). The CSV keeps the
median of the repeats and the min and max (the spread). Points whose cache (x 1.8,
for the copy's target and workspace) does not fit in free memory are skipped.

Targets (issue 14, H200): ours >= 1.0x the best SDPA backend at every T >= 4k,
ours >= 85 % of the copy's bandwidth at T >= 16k. The script prints them for the
eager calls and for the graph replays. Results: results/decode_attention_gpu.{csv,png,txt}
(the .txt has the sweep, the host overhead and both target tables).
Writes decode_attention_gpu.csv as it goes (no matplotlib needed on the GPU);
--plot draws decode_attention_gpu.png and decode_attention_gpu_ratio.png from a CSV.
"""
import argparse
import math
import time
from pathlib import Path

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
import torch
import torch.nn.functional as F

from coursekit.bench import (CsvLog, add_common_args, device_name, read_csv, spread, time_interleaved,
                             try_capture_graph)

FIELDS = ["batch", "heads", "kv_heads", "seq_len", "head_dim", "dtype", "method", "us", "us_min", "us_max", "runs",
          "gbps", "cache_bytes", "num_splits", "max_err", "device"]
HEADS, HEAD_DIM = 32, 128
SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


def cache_bytes(batch, kv_heads, seq_len, head_dim, element_size):
    return 2 * batch * kv_heads * seq_len * head_dim * element_size  # K and V


def methods(impl, heads, kv_heads, skip):
    """{name: fn(q, k, v) -> out} for every method of the docstring not in `skip`."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gqa = heads != kv_heads
    backends = dict(flash=SDPBackend.FLASH_ATTENTION, efficient=SDPBackend.EFFICIENT_ATTENTION,
                    cudnn=SDPBackend.CUDNN_ATTENTION, math=SDPBackend.MATH)

    def sdpa(backend):
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        return run

    fns = {"ours": lambda q, k, v: impl.decode_attention_triton.triton_decode_attention(q, k, v)[0]}
    fns.update({name: sdpa(b) for name, b in backends.items()})
    fns["flex"] = lambda q, k, v: compiled_flex()(q, k, v, enable_gqa=gqa)
    fns["l05"] = lambda q, k, v: impl.flash_attention_triton.triton_flash_attention_forward(q, k, v)[0]
    return {name: fn for name, fn in fns.items() if name not in skip}


_FLEX = {}


def compiled_flex():
    """flex_attention compiled once with dynamic shapes: one compilation serves every T and B
    (a static compile per shape would cost ~10 s each, 50 times)."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=True)
    return _FLEX["fn"]


GRAPHED = ("ours", "flash", "efficient", "cudnn", "l05", "copy")




def fits(batch, kv_heads, seq_len, factor=1.8):
    free, _ = torch.cuda.mem_get_info()
    return factor * cache_bytes(batch, kv_heads, seq_len, HEAD_DIM, 2) < free


def measure_point(impl, batch, kv_heads, seq_len, dtype, args):
    """One CSV row per method at one (B, Hkv, T)."""
    from coursekit.bench import gpu_time

    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, HEADS, 1, HEAD_DIM, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(batch, kv_heads, seq_len, HEAD_DIM, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(batch, kv_heads, seq_len, HEAD_DIM, device="cuda", dtype=dtype, generator=gen)
    nbytes = cache_bytes(batch, kv_heads, seq_len, HEAD_DIM, q.element_size())
    dst = torch.empty_like(k)

    def copy():
        dst.copy_(k)
        dst.copy_(v)

    skip = set(args.skip)
    group = HEADS // kv_heads
    if group > 1 and nbytes * group > args.math_max_gb * 1e9:
        skip.add("math")  # the math backend materialises repeat_interleave(k, v): G x the cache
    fns = methods(impl, HEADS, kv_heads, skip)
    with torch.no_grad():
        expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=group > 1) \
            if nbytes * (2 if group == 1 else 2 * group) < 8e9 else None
        errors, live = {}, {}
        for name, fn in fns.items():
            try:
                out = fn(q, k, v)  # compiles / picks a kernel outside the timed region
                torch.cuda.synchronize()
                errors[name] = (out.float() - expected).abs().max().item() if expected is not None else math.nan
                live[name] = fn
            except Exception as e:  # a backend that rejects this shape, or runs out of memory
                print(f"    {name:9s} skipped: {type(e).__name__}: {str(e).splitlines()[0][:90]}")
                torch.cuda.empty_cache()
        live["copy"] = lambda q, k, v: copy()
        errors["copy"] = math.nan
        calls = {name: (lambda fn=fn: fn(q, k, v)) for name, fn in live.items()}
        if args.graphs:  # the same calls replayed from a CUDA graph: no host work between the kernels
            for name in [n for n in live if n in GRAPHED]:
                graph = try_capture_graph(calls[name])
                if graph is not None:
                    calls[f"{name}_graph"] = graph.replay
                    errors[f"{name}_graph"] = errors[name]
        times = time_interleaved(calls, repeats=args.repeats,
                                 timer=lambda call: gpu_time(call, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms))
    splits = None
    try:
        dat = impl.decode_attention_triton
        splits = dat.choose_num_splits(batch, kv_heads, seq_len, dat._sm_count(torch.cuda.current_device()))
    except AttributeError:
        pass
    rows = []
    for name, ts in times.items():
        fields = spread(ts)                                             # us, us_min, us_max, runs
        moved = 2 * nbytes if name.startswith("copy") else nbytes
        rows.append(dict(batch=batch, heads=HEADS, kv_heads=kv_heads, seq_len=seq_len, head_dim=HEAD_DIM,
                         dtype=str(dtype).replace("torch.", ""), method=name, **fields,
                         gbps=round(moved / (fields["us"] * 1e-6) / 1e9, 1), cache_bytes=nbytes,
                         num_splits=splits if name.startswith("ours") else "", max_err=f"{errors[name]:.2e}",
                         device=device_name()))
    del q, k, v, dst
    torch.cuda.empty_cache()
    return rows


def host_overhead(impl, calls=200):
    """Host (CPU) microseconds per call, without waiting for the GPU: what a decode step pays
    per attention call before any kernel runs, when it is not replayed from a graph."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 8, 4096, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    fns = {"ours (2 launches)": lambda: impl.decode_attention_triton.triton_decode_attention(q, k, v),
           "ours, S=1 (1 launch)": lambda: impl.decode_attention_triton.triton_decode_attention(q, k, v, num_splits=1),
           "sdpa cudnn": cudnn,
           "l05": lambda: impl.flash_attention_triton.triton_flash_attention_forward(q, k, v),
           "empty launch of torch (x.add_(1))": lambda: q.add_(0)}
    for name, fn in fns.items():
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        host = (time.perf_counter() - start) / calls
        torch.cuda.synchronize()
        print(f"host time per call, B=1 H=32 Hkv=8 T=4096: {name:34s} {host * 1e6:7.1f} us")


def sweep(impl, args):
    """Time the split kernel over block sizes, warps, stages and forced split counts at a few
    shapes; print the best per shape (what the config table and choose_num_splits were fitted to)."""
    from coursekit.bench import gpu_time

    dat = impl.decode_attention_triton
    shapes = [(1, 1, 16384), (1, 1, 131072), (1, 8, 32768), (8, 8, 32768), (64, 32, 4096), (64, 8, 16384)]
    configs = [dict(BLOCK_N=n, num_warps=w, num_stages=s) for n in (32, 64, 128) for w, s in ((4, 2), (4, 3), (4, 4), (8, 3))]
    split_counts = [1, 2, 4, 8, 16, 32, 64, 128]
    sms = dat._sm_count(torch.cuda.current_device())
    best_overall = {}
    for batch, kv_heads, seq_len in shapes:
        gen = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(batch, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
        k = torch.randn(batch, kv_heads, seq_len, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
        v = torch.randn_like(k)
        nbytes = cache_bytes(batch, kv_heads, seq_len, HEAD_DIM, 2)
        results = {}
        for config in configs:
            dat.GPU_CONFIG = config
            for s in split_counts:
                if s > 1 and seq_len // s < config["BLOCK_N"]:
                    continue
                try:
                    t = gpu_time(lambda: dat.triton_decode_attention(q, k, v, num_splits=s), warmup_ms=5, rep_ms=20)
                except Exception as e:
                    print(f"  {config} S={s}: failed ({str(e).splitlines()[0][:80]})")
                    continue
                results[(config["BLOCK_N"], config["num_warps"], config["num_stages"], s)] = t
                best_overall.setdefault(tuple(config.values()), []).append((batch, kv_heads, seq_len, s, t))
        best = sorted(results.items(), key=lambda kv: kv[1])[:5]
        heuristic = dat.choose_num_splits(batch, kv_heads, seq_len, sms)
        print(f"sweep B={batch} Hkv={kv_heads} T={seq_len} (heuristic S={heuristic}):")
        for (n, w, st, s), t in best:
            print(f"    BLOCK_N={n:3d} warps={w} stages={st} S={s:3d}: {t * 1e6:8.1f} us {nbytes / t / 1e9:7.0f} GB/s")
        del q, k, v
    # the config whose best-S time summed over the shapes is least
    totals = {}
    for config, entries in best_overall.items():
        per_shape = {}
        for b, h, t_len, s, t in entries:
            per_shape[(b, h, t_len)] = min(per_shape.get((b, h, t_len), math.inf), t)
        if len(per_shape) == len(shapes):
            totals[config] = sum(t / min(e[4] for e in sum(best_overall.values(), []) if e[:3] == key)
                                 for key, t in per_shape.items())
    ranked = sorted(totals.items(), key=lambda kv: kv[1])
    for config, total in ranked[:5]:
        print(f"  config (BLOCK_N, warps, stages) = {config}: sum over shapes of time / best time = {total:.2f}")
    if ranked:  # the rest of the run uses the winner
        n, w, st = ranked[0][0]
        dat.GPU_CONFIG = dict(BLOCK_N=n, num_warps=w, num_stages=st)
    print("GPU_CONFIG =", dat.GPU_CONFIG)


def report(rows, suffix=""):
    """Print ours vs the best SDPA backend and vs the copy, and the two targets, for the eager
    calls (suffix "") or the CUDA-graph replays (suffix "_graph")."""
    table = {}
    for r in rows:
        table.setdefault((int(r["batch"]), int(r["kv_heads"]), int(r["seq_len"])), {})[r["method"]] = r
    misses_sdpa, misses_copy = [], []
    print(f"\n{'graph replays' if suffix else 'eager calls'}:")
    print(f"{'B':>3} {'Hkv':>3} {'T':>7}  {'ours us':>9} {'S':>4} {'best sdpa us':>18} {'ours/sdpa':>9} "
          f"{'ours GB/s':>9} {'copy GB/s':>9} {'ours/copy':>9} {'flex us':>8} {'l05 us':>8}")
    for (b, h, t), m in sorted(table.items()):
        ours_row = m.get("ours" + suffix)
        copies = [m[c] for c in ("copy", "copy_graph") if c in m]  # the roof: the faster of the two copies
        copy_row = max(copies, key=lambda r: float(r["gbps"])) if copies else None
        if ours_row is None:
            continue
        ours = float(ours_row["us"])
        sdpa = {n: float(m[n + suffix]["us"]) for n in SDPA_BACKENDS if n + suffix in m}
        best = min(sdpa, key=sdpa.get) if sdpa else None
        r_sdpa = sdpa[best] / ours if best else math.nan
        r_copy = float(ours_row["gbps"]) / float(copy_row["gbps"]) if copy_row else math.nan
        if t >= 4096 and r_sdpa < 1.0:
            misses_sdpa.append(((b, h, t), r_sdpa))
        if t >= 16384 and r_copy < 0.85:
            misses_copy.append(((b, h, t), r_copy))
        flex = m.get("flex" + suffix, {}).get("us", "")
        l05 = m.get("l05" + suffix, {}).get("us", "")
        print(f"{b:3d} {h:3d} {t:7d}  {ours:9.1f} {ours_row['num_splits']!s:>4} "
              f"{(best or '-') + ' ' + (f'{sdpa[best]:.1f}' if best else ''):>18} {r_sdpa:9.2f} "
              f"{float(ours_row['gbps']):9.0f} {float(copy_row['gbps']) if copy_row else math.nan:9.0f} "
              f"{r_copy:9.2f} {flex!s:>8} {l05!s:>8}")
    if not any(f"ours{suffix}" in m for m in table.values()):
        print("  (none measured)")
        return
    print("targets:")
    print(f"  ours >= 1.0x best SDPA at T >= 4k: {'met' if not misses_sdpa else 'MISSED at ' + str(len(misses_sdpa))}"
          + "".join(f"\n    B={b} Hkv={h} T={t}: {r:.2f}x" for (b, h, t), r in misses_sdpa))
    print(f"  ours >= 0.85 of the copy at T >= 16k: {'met' if not misses_copy else 'MISSED at ' + str(len(misses_copy))}"
          + "".join(f"\n    B={b} Hkv={h} T={t}: {r:.2f}" for (b, h, t), r in misses_copy))


def plot(csv_path, png_path):
    """Two figures from the CSV: GB/s of cache read against T per (B, Hkv) (png_path), and
    ours / best SDPA backend against T (png_path with _ratio), graph replays solid, eager dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    batches = sorted({int(r["batch"]) for r in rows})
    kv_heads = sorted({int(r["kv_heads"]) for r in rows}, reverse=True)
    graphs = any(r["method"].endswith("_graph") for r in rows)
    g = "_graph" if graphs else ""
    style = {"ours" + g: ("o-", "tab:green", "ours"), "ours": ("o:", "tab:green", "ours, eager call"),
             "flash" + g: ("s--", "tab:blue", "SDPA flash"), "efficient" + g: ("v--", "tab:cyan", "SDPA efficient"),
             "cudnn" + g: ("D--", "tab:purple", "SDPA cuDNN"), "flex": ("^-", "tab:orange", "flex_attention (eager)"),
             "l05" + g: ("P-", "tab:red", "L05 kernel"), "copy": ("-", "0.2", "copy (1R + 1W), the roof")}

    def series(b, h, method, field="gbps"):
        return sorted((int(r["seq_len"]), float(r[field])) for r in rows
                      if int(r["batch"]) == b and int(r["kv_heads"]) == h and r["method"] == method)

    fig, axes = plt.subplots(len(kv_heads), len(batches), figsize=(5 * len(batches), 3.6 * len(kv_heads)),
                             squeeze=False, sharey=True)
    for i, h in enumerate(kv_heads):
        for j, b in enumerate(batches):
            ax = axes[i, j]
            for method, (marker, color, label) in style.items():
                pts = series(b, h, method)
                if pts:
                    ax.plot(*zip(*pts), marker, color=color, label=label, lw=2 if method.startswith("ours") else 1)
            ax.set_xscale("log", base=2)
            kind = "MHA" if h == HEADS else "MQA" if h == 1 else "GQA"
            ax.set_title(f"B={b}, H={HEADS}, Hkv={h} ({kind})", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if i == len(kv_heads) - 1:
                ax.set_xlabel("cache length T")
            if j == 0:
                ax.set_ylabel("GB/s of cache read")
    axes[0, 0].legend(fontsize=7)
    device = rows[0]["device"] if rows else ""
    fig.suptitle(f"one decoding step, D={HEAD_DIM}, bfloat16, {device}"
                 + (": CUDA-graph replays (solid) and ours as an eager call (dotted)" if graphs else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 3.6), squeeze=False, sharey=True)
    colors = {HEADS: "tab:blue", 8: "tab:green", 1: "tab:red"}
    for j, b in enumerate(batches):
        ax = axes[0, j]
        for h in kv_heads:
            for suffix, ls in (("_graph", "-"), ("", ":")):
                ours = dict(series(b, h, "ours" + suffix, "us"))
                best = {}
                for n in SDPA_BACKENDS:
                    for t, us in series(b, h, n + suffix, "us"):
                        best[t] = min(best.get(t, math.inf), us)
                pts = sorted((t, best[t] / ours[t]) for t in ours if t in best)
                if pts:
                    ax.plot(*zip(*pts), "o" + ls, color=colors.get(h, "0.5"), ms=3,
                            label=f"Hkv={h}" + (", graph" if suffix else ", eager"))
        ax.axhline(1.0, color="0.3", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_title(f"B={b}: ours / best SDPA backend (> 1: ours faster)", fontsize=9)
        ax.set_xlabel("cache length T")
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel("speed ratio")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    ratio_path = Path(png_path).with_name(Path(png_path).stem + "_ratio.png")
    fig.savefig(ratio_path, dpi=110)
    plt.close(fig)
    print(f"wrote {png_path} and {ratio_path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, csv_name="decode_attention_gpu.csv")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--kv-heads", type=int, nargs="+", default=[32, 8, 1])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768, 65536, 131072])
    parser.add_argument("--warmup-ms", type=float, default=10)
    parser.add_argument("--rep-ms", type=float, default=40)
    parser.add_argument("--math-max-gb", type=float, default=16, help="skip SDPA math when its repeated K, V exceed this")
    parser.add_argument("--skip", nargs="*", default=[], help="methods to leave out (e.g. flex math)")
    parser.add_argument("--no-graphs", dest="graphs", action="store_false",
                        help="do not time CUDA-graph replays next to the eager calls")
    parser.add_argument("--sweep", action="store_true", help="tune the split kernel first (prints a table)")
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, Path(args.plot).with_suffix(".png"))
        return

    from coursekit.impl import Implementation
    impl = Implementation(args.impl)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_properties(0).multi_processor_count} SMs")
    host_overhead(impl)
    if args.sweep:
        sweep(impl, args)
    out = Path(args.out) if args.out else None
    rows = []
    start = time.time()
    with CsvLog(out / "decode_attention_gpu.csv" if out else None, fields=FIELDS) as log:
        for batch in args.batches:
            for kv_heads in args.kv_heads:
                for seq_len in args.lengths:
                    if not fits(batch, kv_heads, seq_len):
                        print(f"B={batch} Hkv={kv_heads} T={seq_len}: skipped, the cache does not fit in memory")
                        continue
                    print(f"B={batch} Hkv={kv_heads} T={seq_len} ({time.time() - start:.0f} s)", flush=True)
                    point = measure_point(impl, batch, kv_heads, seq_len, torch.bfloat16, args)
                    for r in point:
                        print(f"    {r['method']:9s} {r['us']:10.1f} us [{r['us_min']:.1f}, {r['us_max']:.1f}] "
                              f"{r['gbps']:7.0f} GB/s  err {r['max_err']}")
                    rows += point
                    log.write(point)
    report(rows)
    if args.graphs:
        report(rows, "_graph")
    if out:
        try:
            plot(out / "decode_attention_gpu.csv", out / "decode_attention_gpu.png")
        except ImportError:
            print("matplotlib not installed: draw the plot later with --plot")


if __name__ == "__main__":
    main()
