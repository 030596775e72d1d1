"""L11 benchmark: one decoding step through a block table vs over a contiguous cache (GPU).

    python benchmarks/paged_attention_gpu.py --impl solutions --out benchmarks/results
    python benchmarks/paged_attention_gpu.py --impl solutions --smoke        # seconds (CPU: TRITON_INTERPRET=1)
    python benchmarks/paged_attention_gpu.py --plot benchmarks/results/paged_attention_gpu.csv

For B in {1, 8, 64} sequences of T = 1k .. 64k tokens each, H = 32 query heads,
Hkv = 8 KV heads, D = 128, bfloat16, it times in the same run, on the same keys
and values (the pool holds exactly the contiguous cache's data, its blocks
scattered by a random permutation, as a long-running server's are):

    paged_bs16, paged_bs256
              impl.paged_attention_triton.triton_paged_attention over pages of
              16 (vLLM's default) and 256 tokens per block
    contiguous
              impl.decode_attention_triton.triton_decode_attention (L10's kernel)
              over k, v (B, Hkv, T, D) with kv_lens: the same kernel without the table
    sdpa_flash, sdpa_efficient, sdpa_cudnn
              F.scaled_dot_product_attention pinned to each backend over the
              contiguous cache (enable_gqa; a backend that rejects it is left out)
    gather_sdpa
              pages gathered into a contiguous copy through the table
              (k_pages[block_tables]), then SDPA (flash): what serving with a paged
              cache costs without a paged kernel

and then the Triton kernels and the fused SDPA backends again, replayed from a
CUDA graph ("<method>_graph" rows): an eager call pays its host work every time
(Python, the checks, Triton's launcher; both launchers' checks also wait for the
GPU once, to read the lengths), a decoder that replays graphs pays none of it.
The graph rows call launch_paged_attention (the kernel launches without the
checks) and L10's kernel with kv_lens, its host-side check skipped
(unchecked_decode): both load the lengths on the GPU, the same work.
"contiguous_nolens_graph" is L10's kernel without kv_lens (every length is T),
which saves that one load.

A step reads the whole cache, K and V: 2 * B * Hkv * T * D * 2 bytes; every
method's GB/s counts exactly those. The target (issue 15): paged within 10 % of
the contiguous kernel (time ratio paged / contiguous <= 1.10), judged on the
graph rows (the GPU's time) and printed for the eager ones too. Each point is
timed --repeats times (default 5) with the methods interleaved (coursekit.bench:
time_interleaved; each timing do_bench with the L2 flushed); the CSV keeps the
median and the min and max. Points whose data does not fit are skipped.

--smoke: B in {1, 2}, T in {64, 200}, H = 4, Hkv = 2, D = 16, one repeat: checks
that every method runs and agrees, in seconds (on a CPU under TRITON_INTERPRET=1,
with SDPA's math backend and no graphs).
Writes paged_attention_gpu.csv as it goes (no matplotlib needed on the GPU);
--plot draws paged_attention_gpu.png from a CSV.
"""
import argparse
import math
import os
import time
from pathlib import Path

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
import torch
import torch.nn.functional as F

from coursekit.bench import CsvLog, add_common_args, device_name, gpu_time, median_time, read_csv, spread, \
    time_interleaved, try_capture_graph

FIELDS = ["batch", "heads", "kv_heads", "seq_len", "head_dim", "dtype", "method", "block_size", "us", "us_min",
          "us_max", "runs", "gbps", "cache_bytes", "num_splits", "max_err", "device"]
SDPA_BACKENDS = ("flash", "efficient", "cudnn")



def cache_bytes(batch, kv_heads, seq_len, head_dim, element_size):
    return 2 * batch * kv_heads * seq_len * head_dim * element_size  # K and V


def make_pages(k, v, block_size, gen):
    """The cache k, v (B, Hkv, T, D) cut into blocks of block_size tokens, stored in a pool
    (num_blocks, Hkv, block_size, D) in a random order; the block table (B, T / block_size)
    int32 says where each sequence's blocks went."""
    B, Hkv, T, D = k.shape
    per_seq = T // block_size
    num_blocks = B * per_seq
    order = torch.randperm(num_blocks, generator=gen, device="cpu").to(k.device)
    tables = order.view(B, per_seq).to(torch.int32)                              # (B, T / bs) physical ids
    k_pages = torch.empty(num_blocks, Hkv, block_size, D, device=k.device, dtype=k.dtype)
    v_pages = torch.empty_like(k_pages)
    # (B, Hkv, T, D) -> (B, Hkv, T / bs, bs, D) -> (B, T / bs, Hkv, bs, D): logical blocks, then scatter
    k_pages[order] = k.view(B, Hkv, per_seq, block_size, D).transpose(1, 2).reshape(num_blocks, Hkv, block_size, D)
    v_pages[order] = v.view(B, Hkv, per_seq, block_size, D).transpose(1, 2).reshape(num_blocks, Hkv, block_size, D)
    return k_pages, v_pages, tables


def unchecked_decode(dat, q, k, v, kv_lens):
    """L10's kernel with kv_lens, its host-side range check of kv_lens skipped (the check waits for the
    GPU, which a CUDA graph cannot): the same GPU work as the eager call, capturable. The lengths
    are valid by construction here."""
    saved = dat._check_inputs
    dat._check_inputs = lambda *args: None
    try:
        return dat.triton_decode_attention(q, k, v, kv_lens=kv_lens)[0][:, :, 0]
    finally:
        dat._check_inputs = saved




def measure_point(impl, batch, seq_len, shape, args, cuda):
    """One CSV row per method at one (B, T)."""
    heads, kv_heads, head_dim = shape
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32   # the interpreter does not emulate bf16 arithmetic
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, heads, 1, head_dim, device=device, dtype=dtype, generator=gen)
    k = torch.randn(batch, kv_heads, seq_len, head_dim, device=device, dtype=dtype, generator=gen)
    v = torch.randn(batch, kv_heads, seq_len, head_dim, device=device, dtype=dtype, generator=gen)
    nbytes = cache_bytes(batch, kv_heads, seq_len, head_dim, q.element_size())
    lens = torch.full((batch,), seq_len, device=device, dtype=torch.int32)
    cpu_gen = torch.Generator().manual_seed(1)
    pages = {bs: make_pages(k, v, bs, cpu_gen) for bs in args.block_sizes if seq_len % bs == 0}
    pat, dat = impl.paged_attention_triton, impl.decode_attention_triton
    q3 = q[:, :, 0]                                                           # (B, H, D): one query per sequence
    gqa = heads != kv_heads

    def sdpa(backend):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        pinned = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                  "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[backend]

        def run():
            with sdpa_kernel(pinned):
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)[:, :, 0]
        return run

    eager, graphable = {}, {}
    for bs, (kp, vp, tables) in pages.items():
        eager[f"paged_bs{bs}"] = lambda kp=kp, vp=vp, t=tables: pat.triton_paged_attention(q3, kp, vp, t, lens)
        graphable[f"paged_bs{bs}"] = lambda kp=kp, vp=vp, t=tables: pat.launch_paged_attention(q3, kp, vp, t, lens)
    eager["contiguous"] = lambda: dat.triton_decode_attention(q, k, v, kv_lens=lens)[0][:, :, 0]
    graphable["contiguous"] = lambda: unchecked_decode(dat, q, k, v, lens)
    graphable["contiguous_nolens"] = lambda: dat.triton_decode_attention(q, k, v)[0][:, :, 0]
    for name in (SDPA_BACKENDS if cuda else ("math",)):
        eager[f"sdpa_{name}"] = graphable[f"sdpa_{name}"] = sdpa(name)
    if 16 in pages and (not cuda or 2.2 * nbytes < torch.cuda.mem_get_info()[0]):
        kp, vp, tables = pages[16]

        def gather_sdpa():
            # (B, T/16) ids -> (B, T/16, Hkv, 16, D) -> (B, Hkv, T, D): a full copy of the cache, then attention
            kc = kp[tables.long()].transpose(1, 2).reshape(batch, kv_heads, seq_len, head_dim)
            vc = vp[tables.long()].transpose(1, 2).reshape(batch, kv_heads, seq_len, head_dim)
            return F.scaled_dot_product_attention(q, kc, vc, enable_gqa=gqa)[:, :, 0]
        eager["gather_sdpa"] = gather_sdpa

    with torch.no_grad():
        expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=gqa)[:, :, 0] \
            if nbytes * 2 * (heads // kv_heads) < 8e9 else None
        errors, calls = {}, {}
        for name, fn in eager.items():
            try:
                out = fn()  # compiles / picks a kernel outside the timed region
                if cuda:
                    torch.cuda.synchronize()
                errors[name] = (out.float() - expected).abs().max().item() if expected is not None else math.nan
                calls[name] = fn
            except Exception as e:  # a backend that rejects this shape, or runs out of memory
                print(f"    {name:15s} skipped: {type(e).__name__}: {str(e).splitlines()[0][:90]}")
                if cuda:
                    torch.cuda.empty_cache()
        if cuda and args.graphs:
            for name, fn in graphable.items():
                if name in calls or name == "contiguous_nolens":
                    graph = try_capture_graph(fn)
                    if graph is not None:
                        calls[f"{name}_graph"] = graph.replay
                        errors[f"{name}_graph"] = errors.get(name, errors["contiguous"])
        calls = {name: call for name, call in calls.items() if name not in args.skip}
        if cuda:
            timer = lambda fn: gpu_time(fn, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)  # noqa: E731
        else:
            timer = lambda fn: median_time(fn, warmup=1, repeat=1)  # noqa: E731
        times = time_interleaved(calls, repeats=args.repeats, timer=timer)

    splits = ""
    if cuda:
        splits = dat.choose_num_splits(batch, kv_heads, seq_len, dat._sm_count(torch.cuda.current_device()))
    rows = []
    for name, ts in times.items():
        block = name.split("_bs")[1].split("_")[0] if "_bs" in name else (16 if name == "gather_sdpa" else "")
        row = dict(batch=batch, heads=heads, kv_heads=kv_heads, seq_len=seq_len, head_dim=head_dim,
                   dtype=str(dtype).replace("torch.", ""), method=name, block_size=block, **spread(ts),
                   cache_bytes=nbytes, num_splits=splits if name.startswith(("paged", "contiguous")) else "",
                   max_err=f"{errors[name]:.2e}", device=device_name())
        row["gbps"] = round(nbytes / (row["us"] * 1e-6) / 1e9, 1)
        rows.append(row)
    del q, k, v, pages, calls
    if cuda:
        torch.cuda.empty_cache()
    return rows


def report(rows, suffix=""):
    """paged / contiguous time ratio per point and block size (<= 1.10 is the target)."""
    table = {}
    for r in rows:
        table.setdefault((int(r["batch"]), int(r["seq_len"])), {})[r["method"]] = r
    block_sizes = sorted({int(r["block_size"]) for r in rows if str(r["method"]).startswith("paged")})
    print(f"\n{'CUDA-graph replays' if suffix else 'eager calls'}: time paged / contiguous (target <= 1.10)")
    print(f"{'B':>3} {'T':>7} {'contig us':>10} " + " ".join(f"{f'bs{b} us':>9} {f'bs{b}/c':>7}" for b in block_sizes)
          + f" {'best sdpa us':>13} {'gather+sdpa us':>15} {'no-lens contig us':>18}")
    misses = []
    for (b, t), m in sorted(table.items()):
        contig = m.get("contiguous" + suffix)
        if contig is None:
            continue
        cells = []
        for bs in block_sizes:
            paged = m.get(f"paged_bs{bs}" + suffix)
            if paged is None:
                cells.append(f"{'-':>9} {'-':>7}")
                continue
            ratio = paged["us"] / contig["us"]
            cells.append(f"{paged['us']:9.1f} {ratio:7.3f}")
            if ratio > 1.10:
                misses.append((b, t, bs, round(ratio, 3)))
        sdpa = [m[f"sdpa_{n}" + suffix]["us"] for n in SDPA_BACKENDS + ("math",) if f"sdpa_{n}" + suffix in m]
        gather, nolens = m.get("gather_sdpa"), m.get("contiguous_nolens" + suffix)
        print(f"{b:3d} {t:7d} {contig['us']:10.1f} " + " ".join(cells)
              + f" {min(sdpa) if sdpa else float('nan'):13.1f} {gather['us'] if gather else float('nan'):15.1f}"
              + f" {nolens['us'] if nolens else float('nan'):18.1f}")
    print("target met at every point" if not misses else f"target missed at (B, T, block_size, ratio): {misses}")


def plot(csv_path, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(2, len(batches), figsize=(4.2 * len(batches), 6.5), squeeze=False)
    styles = {"contiguous": ("k", "o-"), "paged_bs16": ("tab:blue", "s-"), "paged_bs256": ("tab:green", "^-"),
              "sdpa_flash": ("tab:orange", "x--"), "sdpa_cudnn": ("tab:red", "x--"),
              "sdpa_efficient": ("tab:purple", "x--"), "gather_sdpa": ("tab:gray", "d:")}
    for col, b in enumerate(batches):
        ax, rax = axes[0, col], axes[1, col]
        mine = [r for r in rows if r["batch"] == b]
        graphs = any(str(r["method"]).endswith("_graph") for r in mine)
        for method, (color, style) in styles.items():
            name = method + ("_graph" if graphs and method != "gather_sdpa" else "")
            pts = sorted((r["seq_len"], r["gbps"]) for r in mine if r["method"] == name)
            if pts:
                ax.plot(*zip(*pts), style, color=color, ms=4, label=name)
        ax.set_xscale("log", base=2)
        ax.set_title(f"B={b}, H=32, Hkv=8, D=128, bf16" + (" (graph replays)" if graphs else ""), fontsize=9)
        ax.set_xlabel("tokens per sequence T")
        ax.grid(True, which="both", alpha=0.3)
        suffix = "_graph" if graphs else ""
        contig = {r["seq_len"]: r["us"] for r in mine if r["method"] == "contiguous" + suffix}
        for bs, (color, style) in ((16, styles["paged_bs16"]), (256, styles["paged_bs256"])):
            pts = sorted((r["seq_len"], r["us"] / contig[r["seq_len"]]) for r in mine
                         if r["method"] == f"paged_bs{bs}{suffix}" and r["seq_len"] in contig)
            if pts:
                rax.plot(*zip(*pts), style, color=color, ms=4, label=f"block_size {bs}")
        rax.axhline(1.0, color="0.3", lw=1)
        rax.axhline(1.1, color="tab:red", lw=1, ls=":", label="target 1.10")
        rax.set_xscale("log", base=2)
        rax.set_xlabel("tokens per sequence T")
        rax.set_title("time paged / contiguous (L10)", fontsize=9)
        rax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel("GB/s of K and V read")
    axes[1, 0].set_ylabel("time ratio")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    print(f"wrote {png_path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, csv_name="paged_attention_gpu.csv")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--warmup-ms", type=float, default=5)
    parser.add_argument("--rep-ms", type=float, default=20)
    parser.add_argument("--no-graphs", dest="graphs", action="store_false",
                        help="do not time CUDA-graph replays next to the eager calls")
    parser.add_argument("--skip", nargs="*", default=[],
                        help="rows to leave out of the timing (e.g. sdpa_flash: the eager SDPA calls; their "
                             "graph rows stay); every method is still run once and checked")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat: does everything run?")
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, args.plot.with_suffix(".png"))
        return

    cuda = torch.cuda.is_available()
    shape = (32, 8, 128)                                   # H, Hkv, D
    if args.smoke:
        args.batches, args.lengths, args.repeats, shape = [1, 2], [64, 200], 1, (4, 2, 16)
        args.block_sizes = [b for b in args.block_sizes if b <= 16] or [16]
        args.block_sizes = sorted(set(args.block_sizes) | {8})   # 200 tokens: blocks of 8 divide it
        args.warmup_ms, args.rep_ms = 2, 5
    if not cuda:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("no CUDA GPU: run with --smoke under TRITON_INTERPRET=1 (set before Python starts)")
        if not args.smoke:
            raise SystemExit("no CUDA GPU: only --smoke runs on the CPU (under the Triton interpreter)")
        args.graphs = False

    from coursekit.impl import Implementation
    impl = Implementation(args.impl)
    print(f"{device_name()}, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_properties(0).multi_processor_count} SMs" if cuda else ""))
    out_csv = args.out / "paged_attention_gpu.csv" if args.out else None
    rows, start = [], time.time()
    with CsvLog(out_csv, fields=FIELDS) as log:
        for batch in args.batches:
            for seq_len in args.lengths:
                heads, kv_heads, head_dim = shape
                need = cache_bytes(batch, kv_heads, seq_len, head_dim, 2) * (2 + len(args.block_sizes))
                if cuda and need > 0.9 * torch.cuda.mem_get_info()[0]:
                    print(f"B={batch} T={seq_len}: skipped, {need / 1e9:.0f} GB does not fit")
                    continue
                print(f"B={batch} T={seq_len} ({time.time() - start:.0f} s)", flush=True)
                point = measure_point(impl, batch, seq_len, shape, args, cuda)
                for r in point:
                    print(f"    {r['method']:22s} {r['us']:10.1f} us [{r['us_min']:.1f}, {r['us_max']:.1f}] "
                          f"{r['gbps']:8.1f} GB/s  err {r['max_err']}")
                rows += point
                log.write(point)
    report(rows)
    if any(str(r["method"]).endswith("_graph") for r in rows):
        report(rows, "_graph")
    if args.smoke:
        bad = [r for r in rows if r["max_err"] != "nan" and float(r["max_err"]) > (2e-2 if cuda else 1e-4)]
        if bad:
            raise SystemExit(f"smoke: methods disagree with SDPA: {[(r['method'], r['max_err']) for r in bad]}")
        print("smoke: every method ran and agrees with SDPA")
    if out_csv and not args.smoke:
        try:
            plot(out_csv, out_csv.with_suffix(".png"))
        except ImportError:
            print("matplotlib not installed: draw the plot later with --plot")


if __name__ == "__main__":
    main()
