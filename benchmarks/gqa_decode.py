"""L06 benchmark: decoding with MHA, GQA and MQA at the same hidden size.

    # CPU (committed: benchmarks/results/gqa_decode_cpu.{csv,png}), a few minutes on 2 cores
    .venv/bin/python benchmarks/gqa_decode.py --device cpu --impl solutions --out benchmarks/results
    # GPU (committed: results/gqa_decode_cuda.{csv,png}, from an H200; the H100 run is in results/h100/)
    python benchmarks/gqa_decode.py --device cuda --impl solutions --out benchmarks/results
    # redraw a PNG from a CSV (here, where matplotlib is installed)
    .venv/bin/python benchmarks/gqa_decode.py --plot benchmarks/results/gqa_decode_cuda.csv
    # seconds-long smoke test of both code paths on CPU (the Triton kernel under the interpreter)
    TRITON_INTERPRET=1 .venv/bin/python benchmarks/gqa_decode.py --device cpu --smoke

Every configuration has the same hidden size and the same number of QUERY
heads; only the number of key/value heads Hkv changes (default 16 query heads
of D = 128: Hkv = 16 is MHA, 4 is GQA with groups of 4, 1 is MQA). Ratios are
against MHA, measured in the same run.

--device cpu, two measurements:
1. decode: your GroupedQueryAttention with your L04 KVCache. The cache is
   filled with a prefix of P random positions (not timed), then N single-token
   steps are timed one by one: tokens/s = B / (median step time). The cache's nbytes is printed next
   to kv_cache_bytes(B, P + N, 1, Hkv, D, float32).
2. attention only: one decoding step, q (B, H, 1, D) against a cache
   (B, Hkv, T, D), computed three ways with the same matmul + softmax:
   "repeat"  - repeat_kv(k), repeat_kv(v) to H heads, then attend (what the module does);
   "grouped" - no copy: the n_rep query heads of a group are folded into one
               (B, Hkv, n_rep, D) block that multiplies its group's k directly;
   "sdpa"    - F.scaled_dot_product_attention(q, k, v, enable_gqa=True).
   GB/s = bytes of the cache (2 * B * Hkv * T * D * 4) / time: the bytes a
   step must read at least.

--device cuda: one decoding step of attention over a long bf16 cache (batch
B > 1), q (B, H, 1, D), k and v (B, Hkv, T, D), each method timed --repeats
times (default 5), the methods taken in turn (coursekit.bench.time_interleaved),
each timing coursekit.bench.gpu_time (L2 flushed before every call, so the cache
comes from HBM); the CSV keeps the median ms and the min and max:
   "triton"      - your L05 triton_flash_attention_forward(q, k, v, causal=True):
                   it maps query head h to key/value head h // n_rep itself and
                   never materialises repeated K/V;
   "sdpa_gqa"    - F.scaled_dot_product_attention(q, k, v, enable_gqa=True), the baseline;
   "sdpa_repeat" - repeat_kv, then SDPA on H heads: the copy the module makes.
   (One query at the LAST position sees every key: causal=True in the course's
   bottom-right convention; SDPA's is_causal would be top-left and let it see
   key 0 only, so SDPA is called without a mask.) GB/s = cache bytes / median
   time; an H200's HBM3e peaks near 4.8 TB/s (a copy sustains about 4 TB/s).

What to look for: the cache shrinks exactly by H / Hkv (4x for GQA-4, 16x for
MQA here). A decoding step that READS only Hkv heads (grouped, triton, and
usually sdpa_gqa) gets faster by about the same factor once the cache, not
the weights, dominates the bytes a step reads (long context, batch > 1). A step
that first repeats K/V to H heads (repeat, sdpa_repeat, the module) still
writes and reads H heads' worth every step: it saves memory capacity, not
bandwidth, and can be SLOWER than MHA, whose repeat_kv is a no-op. The module
also saves (H - Hkv) / H of the k_proj and v_proj work, visible at short prefixes.
"""
import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: coursekit, solutions, model

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
from coursekit.bench import (CsvLog, add_common_args, device_name, median_time, print_table,  # noqa: E402
                             read_csv, spread, time_interleaved)
from coursekit.impl import Implementation  # noqa: E402

CPU_CSV, CUDA_CSV = "gqa_decode_cpu.csv", "gqa_decode_cuda.csv"


# ------------------------------------------------------------------ attention --

def attend_repeat(repeat_kv, q, k, v):
    """Repeat k and v to H heads, then softmax(q k^T / sqrt(D)) v.
    q (B, H, 1, D), k and v (B, Hkv, T, D) -> (B, H, 1, D)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, T, D): writes H heads' worth
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, 1, D) @ (B, H, D, T) -> (B, H, 1, T)
    return torch.softmax(scores, dim=-1) @ v  # (B, H, 1, T) @ (B, H, T, D) -> (B, H, 1, D)


def attend_grouped(q, k, v):
    """The same numbers without the copy: query head h = g * n_rep + r is row r of group g.
    q (B, H, 1, D) -> (B, Hkv, n_rep, D); k, v (B, Hkv, T, D) are read once per group."""
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    qg = q.reshape(B, Hkv, H // Hkv, D)  # (B, Hkv, n_rep, D): the group's queries side by side
    scores = qg @ k.transpose(-2, -1) / math.sqrt(D)  # (B, Hkv, n_rep, D) @ (B, Hkv, D, T) -> (B, Hkv, n_rep, T)
    out = torch.softmax(scores, dim=-1) @ v  # (B, Hkv, n_rep, T) @ (B, Hkv, T, D) -> (B, Hkv, n_rep, D)
    return out.reshape(B, H, 1, D)


def attend_sdpa(q, k, v):
    # No mask: the single query is the last position and sees every key.
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


# ------------------------------------------------------------------------ CPU --

def bench_cpu(args, impl):
    gqa_mod, kv_mod = impl.gqa, impl.kv_cache
    H, D, B, N = args.heads, args.head_dim, args.batch, args.steps
    hidden = H * D
    decode_rows, attention_rows = [], []
    for P in args.prefix:
        for Hkv in args.kv_heads:
            torch.manual_seed(0)
            module = gqa_mod.GroupedQueryAttention(hidden, H, Hkv).eval()
            cache = kv_mod.KVCache(B, Hkv, P + N, D)
            gen = torch.Generator().manual_seed(1)
            cache.update(torch.randn(B, Hkv, P, D, generator=gen), torch.randn(B, Hkv, P, D, generator=gen))
            x = torch.randn(B, N + 2, hidden, generator=gen)
            with torch.no_grad():
                for t in range(2):  # warm-up steps (they also go into the cache, which has room)
                    module(x[:, t:t + 1], cache=cache)
                cache.seq_len = P  # rewind: the warm-up positions are overwritten by the timed steps
                times = []
                for t in range(N):
                    start = time.perf_counter()
                    module(x[:, t:t + 1], cache=cache)
                    times.append(time.perf_counter() - start)
            seconds = statistics.median(times)  # per step: robust to the odd preempted step on a shared machine
            decode_rows.append(dict(part="decode", kv_heads=Hkv, n_rep=H // Hkv, prefix=P, steps=N, batch=B,
                                    step_ms=1e3 * seconds, tokens_per_s=B / seconds,
                                    cache_bytes=cache.k_cache.nbytes + cache.v_cache.nbytes,
                                    formula_bytes=gqa_mod.kv_cache_bytes(B, P + N, 1, Hkv, D, torch.float32)))
            print(f"  decode  P={P:5d} Hkv={Hkv:2d}: {1e3 * seconds:7.2f} ms/step", flush=True)
            del module, cache

        for Hkv in args.kv_heads:
            T = P
            gen = torch.Generator().manual_seed(2)
            q = torch.randn(B, H, 1, D, generator=gen)
            k, v = torch.randn(B, Hkv, T, D, generator=gen), torch.randn(B, Hkv, T, D, generator=gen)
            expected = attend_repeat(gqa_mod.repeat_kv, q, k, v)
            cache_bytes = 2 * B * Hkv * T * D * 4
            for method, fn in (("repeat", lambda: attend_repeat(gqa_mod.repeat_kv, q, k, v)),
                               ("grouped", lambda: attend_grouped(q, k, v)),
                               ("sdpa", lambda: attend_sdpa(q, k, v))):
                err = (fn() - expected).abs().max().item()
                seconds = median_time(fn, warmup=2, repeat=args.repeat)
                attention_rows.append(dict(part="attention", kv_heads=Hkv, n_rep=H // Hkv, prefix=T, steps=1,
                                           batch=B, method=method, step_ms=1e3 * seconds,
                                           gb_per_s=cache_bytes / seconds / 1e9, cache_bytes=cache_bytes,
                                           max_abs_diff=err))
            print(f"  attention T={T:5d} Hkv={Hkv:2d}: " + ", ".join(
                f"{r['method']} {r['step_ms']:.2f} ms" for r in attention_rows[-3:]), flush=True)

    for rows, key in ((decode_rows, lambda r: r["prefix"]), (attention_rows, lambda r: (r["prefix"], r["method"]))):
        mha = {key(r): r["step_ms"] for r in rows if r["kv_heads"] == H}
        for r in rows:
            r["speedup_vs_mha"] = mha[key(r)] / r["step_ms"] if key(r) in mha else float("nan")
    for r in decode_rows:
        mha_bytes = [m["cache_bytes"] for m in decode_rows if m["kv_heads"] == H and m["prefix"] == r["prefix"]]
        r["cache_ratio_vs_mha"] = mha_bytes[0] / r["cache_bytes"] if mha_bytes else float("nan")

    config = (f"hidden {hidden} = {H} query heads x D={D}, batch {B}, float32; decode: {N} steps after a prefix "
              f"of P; {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(config)
    print_table(["P", "Hkv", "ms/step", "tokens/s", "vs MHA", "cache bytes", "formula", "cache / MHA"],
                [[r["prefix"], r["kv_heads"], f"{r['step_ms']:.2f}", f"{r['tokens_per_s']:.0f}",
                  f"{r['speedup_vs_mha']:.2f}x", r["cache_bytes"], r["formula_bytes"],
                  f"1/{r['cache_ratio_vs_mha']:.0f}"] for r in decode_rows])
    print()
    print_table(["T", "Hkv", "method", "ms/step", "GB/s of cache", "vs MHA (same method)", "max |diff|"],
                [[r["prefix"], r["kv_heads"], r["method"], f"{r['step_ms']:.3f}", f"{r['gb_per_s']:.1f}",
                  f"{r['speedup_vs_mha']:.2f}x", f"{r['max_abs_diff']:.1e}"] for r in attention_rows])
    if any(r["cache_bytes"] != r["formula_bytes"] for r in decode_rows):
        print("WARNING: KVCache.nbytes differs from kv_cache_bytes: check both")
    return decode_rows + attention_rows, config


# ----------------------------------------------------------------------- CUDA --

def bench_step_attention(args, impl, device):
    """One decoding step of attention over a long cache: Triton kernel vs SDPA.
    Runs on CUDA (gpu_time), or on CPU under TRITON_INTERPRET=1 for --smoke."""
    H, D, B = args.heads, args.head_dim, args.batch
    dtype = getattr(torch, args.dtype)
    try:
        triton_forward = impl.flash_attention_triton.triton_flash_attention_forward
    except (ImportError, AttributeError) as err:
        print(f"  no Triton kernel ({err}); timing SDPA only")
        triton_forward = None
    if device == "cuda":
        from coursekit.bench import gpu_time

        def timer(fn):
            return gpu_time(fn)
    else:
        def timer(fn):
            return median_time(fn, warmup=1, repeat=3)

    def measure(T, Hkv):  # one configuration; its tensors are freed on return
        gen = torch.Generator(device=device).manual_seed(3)
        q = torch.randn(B, H, 1, D, generator=gen, device=device, dtype=dtype)  # the newest token's queries
        k = torch.randn(B, Hkv, T, D, generator=gen, device=device, dtype=dtype)  # the cache
        v = torch.randn(B, Hkv, T, D, generator=gen, device=device, dtype=dtype)
        cache_bytes = 2 * B * Hkv * T * D * k.element_size()
        methods = {"sdpa_gqa": lambda: attend_sdpa(q, k, v),
                   "sdpa_repeat": lambda: F.scaled_dot_product_attention(
                       q, impl.gqa.repeat_kv(k, H // Hkv), impl.gqa.repeat_kv(v, H // Hkv))}
        if triton_forward is not None:
            methods["triton"] = lambda: triton_forward(q, k, v, causal=True)[0]
        expected = methods["sdpa_gqa"]().float()
        errors, live = {}, {}
        for method, fn in methods.items():
            try:
                errors[method] = (fn().float() - expected).abs().max().item()
                live[method] = fn
            except NotImplementedError as exc:  # the student's stub
                print(f"  {method}: {exc}")
        times = time_interleaved(live, repeats=args.repeats, timer=timer)
        found = []
        for method, ts in times.items():
            fields = spread(ts, scale=1e3, prefix="step_ms", digits=5)  # step_ms (median), _min, _max, runs
            found.append(dict(part="step_attention", kv_heads=Hkv, n_rep=H // Hkv, prefix=T, batch=B,
                              method=method, **fields, gb_per_s=round(cache_bytes / fields["step_ms"] / 1e6, 1),
                              cache_bytes=cache_bytes, max_abs_diff=errors[method]))
        return found

    rows = []
    for T in args.cache_len:
        for Hkv in args.kv_heads:
            new = measure(T, Hkv)
            rows += new
            print(f"  T={T:6d} Hkv={Hkv:2d}: " + ", ".join(
                f"{r['method']} {r['step_ms']:.3f} ms ({r['gb_per_s']:.0f} GB/s)" for r in new), flush=True)

    base = {(r["prefix"], r["kv_heads"]): r["step_ms"] for r in rows if r["method"] == "sdpa_gqa"}
    mha = {(r["prefix"], r["method"]): r["step_ms"] for r in rows if r["kv_heads"] == H}
    for r in rows:
        r["speedup_vs_sdpa_gqa"] = base[(r["prefix"], r["kv_heads"])] / r["step_ms"]
        r["speedup_vs_mha"] = mha.get((r["prefix"], r["method"]), float("nan")) / r["step_ms"]
    name = device_name() if device == "cuda" else "CPU (Triton interpreter)"
    config = (f"{name}: one decoding step, q ({B}, {H}, 1, {D}), cache ({B}, Hkv, T, {D}) {args.dtype}; "
              f"torch {torch.__version__}")
    print(config)
    print_table(["T", "Hkv", "method", "ms/step", "GB/s of cache", "vs sdpa_gqa", "vs MHA (same method)", "max |diff|"],
                [[r["prefix"], r["kv_heads"], r["method"], f"{r['step_ms']:.3f}", f"{r['gb_per_s']:.0f}",
                  f"{r['speedup_vs_sdpa_gqa']:.2f}x", f"{r['speedup_vs_mha']:.2f}x", f"{r['max_abs_diff']:.1e}"]
                 for r in rows])
    return rows, config


# ----------------------------------------------------------------- CSV, plot --

def write_csv(rows, config, path):
    """The rows with the run's description in a `config` column (older CSVs had it on a first '#' line)."""
    fields = ["config"]
    for r in rows:
        fields += [k for k in r if k not in fields]
    with CsvLog(path, fields=fields) as log:
        log.write([{"config": config, **{k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in r.items()}}
                   for r in rows])


def load_csv(path):
    """(rows, config) from a CSV of write_csv, or from an older one that starts with '# config'."""
    text = path.read_text()
    if text.startswith("#"):   # the older layout: move the comment out of the way of the header
        import tempfile
        first, rest = text.split("\n", 1)
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / path.name
            plain.write_text(rest)
            return read_csv(plain), first[1:].strip()
    rows = read_csv(path)
    return rows, (rows[0].get("config", "") if rows else "")


COLORS = {"repeat": "tab:red", "grouped": "tab:green", "sdpa": "tab:blue",
          "triton": "tab:green", "sdpa_gqa": "tab:blue", "sdpa_repeat": "tab:red"}


def plot(rows, config, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decode = [r for r in rows if r["part"] == "decode"]
    attention = [r for r in rows if r["part"] in ("attention", "step_attention")]
    kv_heads = sorted({r["kv_heads"] for r in rows}, reverse=True)
    H = max(kv_heads)
    label = {h: ("MHA" if h == H else "MQA" if h == 1 else "GQA") + f" Hkv={h}" for h in kv_heads}
    panels = (2 if decode else 1) + 2  # without a decode part (GPU): time against the cache length first
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.3))
    axes = list(axes)
    if not decode:
        ax = axes.pop(0)
        colors = dict(zip(kv_heads, ("tab:blue", "tab:orange", "tab:green", "tab:purple")))
        styles = {"triton": "o-", "sdpa_gqa": "^:", "sdpa_repeat": "s--"}
        for h in kv_heads:
            for m in dict.fromkeys(r["method"] for r in attention):
                pts = sorted((r["prefix"], r["step_ms"]) for r in attention if r["kv_heads"] == h and r["method"] == m)
                if pts:
                    ax.loglog(*zip(*pts), styles.get(m, "x-"), color=colors[h], label=f"{label[h]} {m}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("cache length T")
        ax.set_ylabel("ms per decoding step")
        ax.set_title("one step of attention vs cache length")
        ax.legend(fontsize=6)
        ax.grid(True, which="both", alpha=0.3)
    width = 0.8 / len(kv_heads)
    if decode:
        prefixes = sorted({r["prefix"] for r in decode})
        ax = axes.pop(0)
        for i, h in enumerate(kv_heads):
            vals = [next(r["tokens_per_s"] for r in decode if r["prefix"] == p and r["kv_heads"] == h)
                    for p in prefixes]
            bars = ax.bar([j + (i - (len(kv_heads) - 1) / 2) * width for j in range(len(prefixes))], vals, width,
                          label=label[h])
            for bar, r in zip(bars, [next(r for r in decode if r["prefix"] == p and r["kv_heads"] == h)
                                     for p in prefixes]):
                ax.annotate(f"{r['speedup_vs_mha']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(prefixes)), [f"P={p}" for p in prefixes])
        ax.set_ylabel("tokens / s (batch / median step time)")
        ax.set_title("module + KVCache decoding (label: vs MHA)")
        ax.legend(fontsize=8)
        ax = axes.pop(0)
        p = max(prefixes)
        mib = [next(r["cache_bytes"] for r in decode if r["prefix"] == p and r["kv_heads"] == h) / 2**20
               for h in kv_heads]
        bars = ax.bar([label[h] for h in kv_heads], mib, color=["tab:blue", "tab:orange", "tab:green"][:len(kv_heads)])
        for bar, m in zip(bars, mib):
            ax.annotate(f"{m:.1f} MiB\n1/{mib[0] / m:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylim(top=max(mib) * 1.25)
        ax.set_ylabel("cache of one layer (MiB)")
        ax.set_title(f"KVCache memory, P + N = {p + decode[0]['steps']} positions")
    methods = list(dict.fromkeys(r["method"] for r in attention))
    lengths = sorted({r["prefix"] for r in attention})
    T = max(lengths)
    for ax, key, ylabel in ((axes[0], "step_ms", "ms per decoding step"),
                            (axes[1], "gb_per_s", "GB/s of K/V cache read")):
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            vals = [next((r[key] for r in attention if r["prefix"] == T and r["kv_heads"] == h and r["method"] == m),
                         float("nan")) for h in kv_heads]
            ax.bar([j + (i - (len(methods) - 1) / 2) * width for j in range(len(kv_heads))], vals, width,
                   label=m, color=COLORS.get(m))
        ax.set_xticks(range(len(kv_heads)), [label[h] for h in kv_heads])
        if key == "step_ms":
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(f"attention of one step, cache length T = {T}")
        ax.legend(fontsize=8)
    fig.suptitle(config, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, csv_name="gqa_decode_<device>.csv")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--heads", type=int, default=None, help="query heads (default 16 on cpu, 32 on cuda)")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--kv-heads", type=int, nargs="+", default=None, help="default: heads, heads/4, 1")
    parser.add_argument("--batch", type=int, default=None, help="default 4 on cpu, 8 on cuda")
    parser.add_argument("--prefix", type=int, nargs="+", default=[256, 2048], help="cpu: cached positions P")
    parser.add_argument("--steps", type=int, default=24, help="cpu: timed decoding steps N")
    parser.add_argument("--repeat", type=int, default=9,
                        help="cpu: timed calls per attention measurement (the cuda part uses --repeats)")
    parser.add_argument("--cache-len", type=int, nargs="+", default=[4096, 16384, 65536], help="cuda: cache length T")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16",
                        help="cuda: cache dtype (--smoke on cpu uses float16: the Triton interpreter's tl.dot "
                             "mishandles bfloat16)")
    parser.add_argument("--threads", type=int, help="cpu: torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes; on cpu also runs the cuda code path (Triton under TRITON_INTERPRET=1)")
    args = parser.parse_args()

    if args.plot:
        rows, config = load_csv(args.plot)
        plot(rows, config, args.plot.with_suffix(".png"))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU")
    args.heads = args.heads or (4 if args.smoke else 16 if args.device == "cpu" else 32)
    args.batch = args.batch or (2 if args.smoke else 4 if args.device == "cpu" else 8)
    args.kv_heads = args.kv_heads or sorted({args.heads, max(args.heads // 4, 1), 1}, reverse=True)
    if args.smoke:
        args.head_dim, args.prefix, args.steps, args.repeat, args.cache_len = 16, [40], 3, 2, [37, 70]
        args.repeats = min(args.repeats, 2)
        if args.device == "cpu":
            args.dtype = "float16"
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(args.heads % h for h in args.kv_heads):
        parser.error(f"every --kv-heads value must divide --heads={args.heads}")
    impl = Implementation(args.impl)

    if args.device == "cpu":
        rows, config = bench_cpu(args, impl)
        if args.smoke:
            if os.environ.get("TRITON_INTERPRET") != "1":
                print("(set TRITON_INTERPRET=1 to run the Triton kernel on CPU as well)")
            bench_step_attention(args, impl, "cpu")
        name = CPU_CSV
    else:
        rows, config = bench_step_attention(args, impl, "cuda")
        name = CUDA_CSV
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(rows, config, args.out / name)
        print(f"wrote {args.out / name}")
        try:
            plot(rows, config, (args.out / name).with_suffix(".png"))
        except ImportError:
            print(f"no matplotlib here: draw the PNG elsewhere with --plot {args.out / name}")


if __name__ == "__main__":
    main()
