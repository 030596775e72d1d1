"""L05 appendix benchmark: the Hopper fast path against L05's kernel and SDPA's fused kernels (GPU).

    python benchmarks/flash_attention_hopper_gpu.py --impl solutions --out benchmarks/results
    python benchmarks/flash_attention_hopper_gpu.py --impl solutions --ablation --out benchmarks/results
    python benchmarks/flash_attention_hopper_gpu.py --impl solutions --sweep --budget 60

Methods, timed in the same run on the same inputs, interleaved (coursekit.bench.time_interleaved,
--repeats timings each; the CSV keeps the median and the spread):

    l05       impl.flash_attention_triton.triton_flash_attention (the teaching kernel)
    hopper    tutorial/L05_flash_attention/hopper: hopper_flash_attention with its defaults
              (DEFAULT: per head dim and pass, the fastest rung of the H200 ablation)
    fa2       F.scaled_dot_product_attention pinned to SDPBackend.FLASH_ATTENTION
    cudnn     F.scaled_dot_product_attention pinned to SDPBackend.CUDNN_ATTENTION (the target's yardstick)

--ablation replaces `hopper` by the ladder of ABLATION: the appendix's kernel with its steps
switched on one at a time (the last rung is the fast path), so the gain of each step is the
ratio of two neighbouring rows. --sweep times a few tile configurations per kernel, head dim and
causal flag (float16, L = 8k) and prints the table to paste into TILES; a configuration that
fails to compile is printed and skipped.

max_err: max |out - cuDNN's out| on forward rows, max over dq, dk, dv of |grad - cuDNN's| on
forward + backward rows (the same grad_out for every method).

FLOPs: forward 4 * B * H * L^2 * D (halved when causal); forward + backward 3.5 x that (the
backward's five matmuls are 2.5 x the forward's two). Shapes: B = 4, H = 2048 / D (a 2048-wide
model), L = 4k, 8k, 16k.

Targets on an H200 (issue 18), on medians: forward >= 1.0x cudnn, forward + backward >= 0.9x.
"""
import argparse
import math
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
from coursekit.bench import CsvLog, add_common_args, device_name, gpu_time, print_table, read_csv, spread, \
    time_interleaved
from tutorial.L05_flash_attention.hopper import flash_attention_hopper as fah

WIDTH = 2048
CSV_NAME = "flash_attention_hopper_gpu.csv"
TARGETS = {"fwd": 1.0, "fwd+bwd": 0.9}

# The ablation ladder: each rung adds one step to the one before. "plain" is the appendix kernel
# with every step off and L05's tile table, i.e. roughly what the teaching kernel does without its
# tricks; the tile table is a step of its own ("tiles").
OFF = fah.Steps(exp2=False, split_diagonal=False, tma=False, persistent=False, warp_specialize=False)
ABLATION = [
    ("plain", OFF, "l05"),
    ("+exp2", fah.Steps(exp2=True, split_diagonal=False, tma=False, persistent=False, warp_specialize=False), "l05"),
    ("+split_diag", fah.Steps(exp2=True, split_diagonal=True, tma=False, persistent=False, warp_specialize=False),
     "l05"),
    ("+tiles", fah.Steps(exp2=True, split_diagonal=True, tma=False, persistent=False, warp_specialize=False), None),
    ("+tma", fah.Steps(exp2=True, split_diagonal=True, tma=True, persistent=False, warp_specialize=False), None),
    ("+persistent", fah.Steps(exp2=True, split_diagonal=True, tma=True, persistent=True, warp_specialize=False), None),
    ("+atomic_dq", fah.Steps(exp2=True, split_diagonal=True, tma=True, persistent=True, atomic_dq=True), None),
    ("+warp_spec", fah.Steps(exp2=True, split_diagonal=True, tma=True, persistent=True, atomic_dq=True,
                             warp_specialize=True), None),
    # tried after the ladder: the forward's loop rotated (Steps.overlap), on top of +atomic_dq
    ("+overlap", fah.Steps(exp2=True, split_diagonal=True, tma=True, persistent=True, atomic_dq=True,
                           overlap=True), None),
]
L05_TILES = fah.L05_TILES   # L05's tile table as the appendix's Tile rows

SWEEP = {  # the first of each list is TILES' choice for D = 128; all fit in shared memory at D = 128
    "fwd": [fah.Tile(128, 128, 8, 2), fah.Tile(128, 64, 8, 3), fah.Tile(128, 64, 8, 4)],
    "dkdv": [fah.Tile(32, 128, 8, 2), fah.Tile(64, 128, 8, 2), fah.Tile(32, 128, 8, 3), fah.Tile(16, 128, 8, 2)],
    "dq": [fah.Tile(128, 64, 8, 2), fah.Tile(128, 64, 8, 3), fah.Tile(64, 64, 4, 3)],
    "dkdv_atomic": [fah.Tile(32, 128, 8, 2), fah.Tile(64, 128, 8, 2), fah.Tile(16, 128, 8, 2)],
}
ATOMIC = fah.Steps(atomic_dq=True)
FAST_RUNGS = ("+persistent", "+atomic_dq", "+warp_spec", "+overlap")   # an ablation run's candidates for "the fast path"


def flops(batch, heads, seq_len, head_dim, causal, mode):
    forward = 4 * batch * heads * seq_len * seq_len * head_dim / (2 if causal else 1)
    return forward * (3.5 if mode == "fwd+bwd" else 1.0)


def short(err):
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:])[:400] if lines else type(err).__name__


def methods(impl, causal, head_dim, ablation, rungs=None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa(backend):
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return run

    def hopper(steps, tiles):
        return lambda q, k, v: fah.hopper_flash_attention(q, k, v, causal=causal, steps=steps, tiles=tiles)

    calls = {"l05": lambda q, k, v: impl.flash_attention_triton.triton_flash_attention(q, k, v, causal=causal)}
    if ablation:
        for name, steps, tiles in ABLATION:
            if rungs is None or name in rungs:
                calls[name] = hopper(steps, L05_TILES[head_dim] if tiles == "l05" else None)
    else:
        calls["hopper"] = hopper(None, None)      # the module's DEFAULT: the fastest measured per pass
    calls["fa2"] = sdpa(SDPBackend.FLASH_ATTENTION)
    calls["cudnn"] = sdpa(SDPBackend.CUDNN_ATTENTION)
    return calls


def step_of(fn, q, k, v, mode, grad=None):
    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(q, k, v)
    else:
        grad = torch.randn_like(q) if grad is None else grad

        def step():
            torch.autograd.grad(fn(q, k, v), (q, k, v), grad)
    return step


# --- Compiling ahead, in parallel -----------------------------------------------------------
# Every rung is its own set of compiled kernels (about 2 s each on one core), and a point of the
# ablation needs some 30 of them. Triton caches compiled kernels on disk, keyed by the source,
# the constexprs and the arguments' specialisation (ints divisible by 16, pointers 16-byte
# aligned, ints equal to 1): a tiny input with the same heads and the same divisibility compiles
# exactly the kernels the timed run needs. --warm N worker processes do that first, in parallel.
WARM_LEN = 256


def _warm_point(impl_name, dtype_name, head_dim, causal, ablation, rungs, modes, only):
    from coursekit.impl import Implementation
    impl = Implementation(impl_name)
    dtype = getattr(torch, dtype_name)
    q, k, v = (torch.randn(1, WIDTH // head_dim, WARM_LEN, head_dim, device="cuda", dtype=dtype).requires_grad_()
               for _ in range(3))
    failed = []
    for name, fn in methods(impl, causal, head_dim, ablation, rungs).items():
        if name != only:
            continue
        for mode in modes:
            try:
                step_of(fn, q, k, v, mode)()
            except Exception as e:
                failed.append(f"{name} {mode}: {type(e).__name__}: {short(e)}")
    torch.cuda.synchronize()
    return failed


def _warm_sweep(head_dim, causal, kernel, tile):
    q, k, v, grad = (torch.randn(1, WIDTH // head_dim, WARM_LEN, head_dim, device="cuda", dtype=torch.float16)
                     for _ in range(4))
    try:
        out, lse = fah._forward(q, k, v, causal, None, fah.FAST, {kernel: tile} if kernel == "fwd" else None)
        if kernel != "fwd":
            fah._backward(q, k, v, out, lse, grad, causal, None, ATOMIC if kernel == "dkdv_atomic" else fah.FAST,
                          {kernel: tile})
        torch.cuda.synchronize()
        return []
    except Exception as e:
        return [f"sweep {kernel} {tile}: {type(e).__name__}: {short(e)}"]


def warm(workers, tasks):
    """Run tasks [(function, args)] in `workers` spawned processes; print what failed to compile."""
    if workers < 1 or not tasks:
        return
    import concurrent.futures as cf
    import multiprocessing as mp
    start = time.monotonic()
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *a) for fn, a in tasks]
        for f in cf.as_completed(futures):
            try:
                for line in f.result():
                    print(f"  warm: {line}", flush=True)
            except Exception as e:
                print(f"  warm: worker failed: {type(e).__name__}: {short(e)}", flush=True)
    print(f"warmed {len(tasks)} task(s) in {time.monotonic() - start:.0f} s on {workers} processes", flush=True)


def run(args, impl, log, deadline):
    """Measure every point; yield its rows (one per method and mode)."""
    timer = lambda fn: gpu_time(fn, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)  # noqa: E731
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for head_dim in args.head_dims:
            for causal in args.causal:
                for seq_len in args.seq_lens:
                    if time.monotonic() > deadline:
                        print(f"budget spent: skipped {dtype_name} D={head_dim} causal={causal} L={seq_len}")
                        continue
                    batch, heads = args.batch, WIDTH // head_dim
                    gen = torch.Generator(device="cuda").manual_seed(0)
                    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, device="cuda", dtype=dtype,
                                           generator=gen).requires_grad_() for _ in range(3))
                    calls = methods(impl, causal, head_dim, args.ablation, args.rungs)
                    with torch.no_grad():
                        expected = calls["cudnn"](q, k, v).float()
                    grad = torch.randn_like(q)
                    expected_grads = torch.autograd.grad(calls["cudnn"](q, k, v), (q, k, v), grad)
                    for mode in args.modes:
                        steps, errs = {}, {}
                        for name, fn in calls.items():
                            try:
                                with torch.no_grad():
                                    errs[name] = (fn(q, k, v).float() - expected).abs().max().item()
                                if mode != "fwd":   # the gradients too: max |d - d_cudnn| over dq, dk, dv
                                    got = torch.autograd.grad(fn(q, k, v), (q, k, v), grad)
                                    errs[name] = max((a.float() - b.float()).abs().max().item()
                                                     for a, b in zip(got, expected_grads))
                                step = step_of(fn, q, k, v, mode, grad)
                                step()                     # compile outside the timed region
                                torch.cuda.synchronize()
                                steps[name] = step
                            except Exception as e:  # a variant that does not compile must not stop the run
                                print(f"  {name} {mode} D={head_dim} causal={causal} L={seq_len} dtype={dtype_name}: "
                                      f"FAILED {type(e).__name__}: {short(e)}", flush=True)
                                torch.cuda.empty_cache()
                        times = time_interleaved(steps, repeats=args.repeats, timer=timer)
                        medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
                        base = medians.get("cudnn")
                        rows = []
                        for name, t in times.items():
                            f = flops(batch, heads, seq_len, head_dim, causal, mode)
                            row = dict(device=device_name(), dtype=dtype_name, head_dim=head_dim, causal=causal,
                                       seq_len=seq_len, batch=batch, heads=heads, mode=mode, method=name,
                                       **spread(t, scale=1e3, prefix="ms", digits=4),
                                       tflops=round(f / medians[name] / 1e12, 1),
                                       tflops_min=round(f / max(t) / 1e12, 1), tflops_max=round(f / min(t) / 1e12, 1),
                                       vs_cudnn=round(base / medians[name], 3) if base else "",
                                       max_err=f"{errs.get(name, math.nan):.2e}")  # fwd: out; fwd+bwd: grads
                            rows.append(row)
                            print(f"{dtype_name:8s} D={head_dim:3d} causal={causal!s:5s} L={seq_len:5d} {mode:7s} "
                                  f"{name:12s} {row['ms']:8.3f} ms [{row['ms_min']:.3f}..{row['ms_max']:.3f}] "
                                  f"{row['tflops']:6.1f} TFLOP/s  x{row['vs_cudnn']} cudnn  err {row['max_err']}",
                                  flush=True)
                        log.write(rows)
                        yield from rows
                    del q, k, v
                    torch.cuda.empty_cache()


def sweep(args, deadline):
    """Time every SWEEP candidate per (kernel, D, causal) at float16, L = 8k; print the winners."""
    winners = {}
    timer = lambda fn: gpu_time(fn, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms)  # noqa: E731
    seq_len = args.sweep_len
    for head_dim in args.head_dims:
        batch, heads = args.batch, WIDTH // head_dim
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, grad = (torch.randn(batch, heads, seq_len, head_dim, device="cuda", dtype=torch.float16,
                                     generator=gen) for _ in range(4))
        for causal in args.causal:
            out, lse = fah._forward(q, k, v, causal, None, fah.FAST, None)
            for kernel, candidates in SWEEP.items():
                calls = {}
                for tile in candidates:
                    if time.monotonic() > deadline:
                        print(f"  sweep budget spent: skipped {kernel} D={head_dim} causal={causal} {tile}")
                        continue
                    tiles = {kernel: tile}
                    steps = ATOMIC if kernel == "dkdv_atomic" else fah.FAST
                    if kernel == "fwd":
                        call = lambda tiles=tiles: fah._forward(q, k, v, causal, None, fah.FAST, tiles)  # noqa: E731
                    else:
                        call = lambda tiles=tiles, steps=steps: fah._backward(  # noqa: E731
                            q, k, v, out, lse, grad, causal, None, steps, tiles)
                    try:
                        call()
                        torch.cuda.synchronize()
                        calls[tile] = call
                    except Exception as e:
                        print(f"  sweep {kernel} D={head_dim} causal={causal} {tile}: FAILED {type(e).__name__}: "
                              f"{short(e)}", flush=True)
                if not calls:
                    continue
                times = time_interleaved(calls, repeats=max(1, args.repeats // 2), timer=timer)
                for tile, t in times.items():
                    print(f"  sweep {kernel:4s} D={head_dim:3d} causal={causal!s:5s} {tile}: "
                          f"{sorted(t)[len(t) // 2] * 1e3:8.3f} ms", flush=True)
                best = min(times, key=lambda tile: sorted(times[tile])[len(times[tile]) // 2])
                winners[(kernel, head_dim, causal)] = best
    print("TILES = {")
    for key, tile in sorted(winners.items(), key=str):
        print(f"    {key!r}: {tile!r},")
    print("}")


def report(rows):
    by_point = {}
    for r in rows:
        key = (r["dtype"], int(r["head_dim"]), str(r["causal"]) == "True", int(r["seq_len"]), r["mode"])
        by_point.setdefault(key, {})[r["method"]] = float(r["tflops"])
    names = sorted({r["method"] for r in rows}, key=lambda n: [r["method"] for r in rows].index(n))
    lines, misses, total = [], [], 0
    for (dtype, d, causal, seq_len, mode), t in sorted(by_point.items()):
        best = t.get("hopper") or max((t[n] for n in FAST_RUNGS if n in t), default=None)
        ratio = best / t["cudnn"] if best and t.get("cudnn") else math.nan
        verdict = ""
        if not math.isnan(ratio):
            total += 1
            verdict = "ok" if ratio >= TARGETS[mode] else f"MISS (< {TARGETS[mode]})"
            if ratio < TARGETS[mode]:
                misses.append(ratio)
        lines.append([dtype, d, causal, seq_len, mode, *[f"{t.get(n, math.nan):.0f}" for n in names],
                      f"{ratio:.2f}", verdict])
    print_table(["dtype", "D", "causal", "L", "mode", *names, "fast/cudnn", "target"], lines)
    print(f"\ntargets (medians): fwd >= {TARGETS['fwd']}x cudnn, fwd+bwd >= {TARGETS['fwd+bwd']}x; "
          f"{len(misses)} of {total} point(s) missed")


def markdown(rows):
    """The README's tables from a CSV: TFLOP/s per method (rows) and point (columns), with each
    rung's gain over the rung above, and the fast path's ratio to cuDNN."""
    cols = sorted({(r["dtype"], int(r["head_dim"]), str(r["causal"]) == "True", int(r["seq_len"]), r["mode"])
                   for r in rows}, key=lambda c: (c[0], c[4], -c[1], c[2], c[3]))
    names = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], (r["dtype"], int(r["head_dim"]), str(r["causal"]) == "True", int(r["seq_len"]),
                           r["mode"])): r for r in rows}
    head = [f"{m} D={d} {'causal' if c else 'full'} L={n // 1024}k {dt}" for dt, d, c, n, m in cols]
    print("| method | " + " | ".join(head) + " |")
    print("| --- |" + " --- |" * len(cols))
    prev = None
    for name in names:
        out = []
        for col in cols:
            r = cell.get((name, col))
            if r is None:
                out.append("—")
                continue
            text = f"{float(r['tflops']):.0f}"
            p = cell.get((prev, col)) if prev and name.startswith("+") else None
            if p is not None and float(p["tflops"]) > 0:
                text += f" ({float(r['tflops']) / float(p['tflops']):.2f}×)"
            out.append(text)
        print(f"| {name} | " + " | ".join(out) + " |")
        prev = name
    print("\n| point | fast / cuDNN (median) | spread of the fast path (TFLOP/s) |\n| --- | --- | --- |")
    for col in cols:
        fast = cell.get(("hopper", col)) or max((cell[(n, col)] for n in FAST_RUNGS if (n, col) in cell),
                                                key=lambda r: float(r["tflops"]), default=None)
        base = cell.get(("cudnn", col))
        if fast and base and float(base["tflops"]) > 0:
            dt, d, c, n, m = col
            print(f"| {m} D={d} {'causal' if c else 'full'} L={n // 1024}k {dt} | "
                  f"{float(fast['tflops']) / float(base['tflops']):.2f} | "
                  f"{fast['tflops_min']}–{fast['tflops_max']} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, csv_name=CSV_NAME)
    parser.add_argument("--ablation", action="store_true", help="time the ladder of steps (ABLATION)")
    parser.add_argument("--rungs", nargs="+", default=None, metavar="NAME",
                        help="only these rungs of the ablation ladder (default: all): "
                        + " ".join(n for n, _, _ in ABLATION))
    parser.add_argument("--sweep", action="store_true", help="time the tile candidates (SWEEP) and stop")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--causal", type=lambda s: s == "true", nargs="+", default=[False, True],
                        help="true/false values to run")
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sweep-len", type=int, default=8192)
    parser.add_argument("--warmup-ms", type=float, default=10)
    parser.add_argument("--rep-ms", type=float, default=40, help="time budget of one timing (do_bench's rep)")
    parser.add_argument("--budget", type=float, default=math.inf, help="seconds: start no new point after this")
    parser.add_argument("--csv-name", default=CSV_NAME)
    parser.add_argument("--markdown", action="store_true", help="with --plot: also print the README tables")
    parser.add_argument("--warm", type=int, default=0, metavar="N",
                        help="first compile every kernel in N parallel processes (fills Triton's cache)")
    args = parser.parse_args()

    if args.plot:
        rows = read_csv(args.plot)
        report(rows)
        print()
        markdown(rows)
        return
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    import triton
    print(f"{device_name()}  torch {torch.__version__}  triton {triton.__version__}", flush=True)
    deadline = time.monotonic() + args.budget
    if args.sweep:
        warm(args.warm, [(_warm_sweep, (d, c, kernel, tile)) for d in args.head_dims for c in args.causal
                         for kernel, tiles in SWEEP.items() for tile in tiles])
        try:
            sweep(args, deadline)
        except Exception:
            traceback.print_exc()
        return
    from coursekit.impl import Implementation
    impl = Implementation(args.impl)
    names = [n for n in methods(impl, False, 64, args.ablation, args.rungs) if n not in ("fa2", "cudnn")]
    warm(args.warm, [(_warm_point, (impl.name, dt, d, c, args.ablation, args.rungs, args.modes, name))
                     for dt in args.dtypes for d in args.head_dims for c in args.causal for name in names])
    out = args.out / args.csv_name if args.out else None
    with CsvLog(out) as log:
        rows = list(run(args, impl, log, deadline))
    report(rows)


if __name__ == "__main__":
    main()
