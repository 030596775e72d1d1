"""L08 benchmark: memory bandwidth of the fused Triton softmax and layer norm (GPU).

    python benchmarks/fused_bandwidth_gpu.py --impl solutions --out benchmarks/results      # on the GPU
    python benchmarks/fused_bandwidth_gpu.py --impl solutions --sweep --out /tmp/sweep      # which config wins
    python benchmarks/fused_bandwidth_gpu.py --plot benchmarks/results/fused_bandwidth_gpu.csv   # PNG, here
    python benchmarks/fused_bandwidth_gpu.py --impl solutions --smoke                        # CPU check

Softmax and layer norm do a handful of FLOPs per byte: they are memory-bound,
and the best they can do is move each byte once. So the yardstick is a copy of
the same tensor (y.copy_(x): one read and one write), and every method is
reported as achieved bandwidth counting exactly that minimum traffic,

    GB/s = 2 * x.numel() * x.element_size() / seconds        (1 read + 1 write)

whatever it really moves. For each op, dtype and row length n (256 .. 65536, and
one length that is not a power of two), the same run times on the same x:

    ours      impl.fused_ops_triton.triton_softmax(x) / triton_layer_norm(x, w, b)
    torch     torch.softmax(x, -1) / F.layer_norm(x, (n,), w, b)   (PyTorch's own fused CUDA kernels)
    compiled  torch.compile of the eager formula (x - max, exp, sum, divide / mean, var, rsqrt, affine)
    copy      y.copy_(x): the physical limit for 1 read + 1 write

Two sizes per row length (--totals): 2^25 elements (64 MiB in bfloat16, more
than the H200's 50 MiB L2: many short rows, or 512 rows of 65536) and 2^22
(4096 rows of 1024, or 64 rows of 65536: few long rows, where the grid is too
small to fill 132 SMs one row per program). Timing: every point is timed
--repeats times (default 5), the methods taken in turn so that a slow spell on
a shared GPU hits them all (coursekit.bench.time_interleaved). Each timing is,
with --timing graph (the default), one replay of a CUDA graph of k x (L2 flush,
call), less a graph of the k flushes alone timed in the same turns: the GPU's
time, each call reading x from HBM. --timing eager times the calls with
do_bench (L2 flushed) instead: that includes the host's work per call, which
for a Triton kernel on the H200 machine used here (100+ us) exceeds the
kernel's time at these sizes (the committed run, made that way, shows it: the
times do not grow with the bytes). The CSV keeps the median GB/s (what the
targets are judged on), the min and max over the repeats (the spread), the
timing used, and the launch configuration ours ran with.

Targets (printed at the end, on medians): at every row length from 1024 to
65536, ours >= 0.85 of the copy's bandwidth and >= 1.0x torch. The looped
kernels (rows past the single-block limit) read x twice; at best the second
read comes from L2.

--sweep times a small grid of launch configurations per point (rows per
program, warps, block width, persistent grid or not) by swapping the
implementation's choose_config for each candidate, and writes
fused_bandwidth_sweep.csv (the tool for choosing choose_config's constants; the
committed run's sweep was host-bound and decided nothing, see the lesson text);
--tune runs the sweep and then measures each point with its winner. --smoke runs a tiny version on the CPU under TRITON_INTERPRET=1
(median_time instead of CUDA events, torch.compile skipped if it fails) to
check the script, not to measure anything. --plot redraws the PNG from a CSV
(also the older CSVs, which have the GB/s columns but no spread).
"""
import argparse
import os
import sys

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)

from coursekit.bench import CsvLog, add_common_args, read_csv, time_interleaved

DEFAULT_LENGTHS = [256, 512, 1024, 2048, 3000, 4096, 8192, 16384, 32768, 65536]
DEFAULT_TOTALS = [2 ** 25, 2 ** 22]
METHODS = ("ours", "torch", "compiled", "copy")
TARGET_COPY, TARGET_TORCH, TARGET_FROM = 0.85, 1.0, 1024   # the lesson's targets, for n >= TARGET_FROM


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


def make_timer(device, args):
    """How calls are timed (see timed): CUDA-graph replays (default on a GPU), eager calls through
    do_bench (L2 flushed), or a wall-clock median on the CPU smoke run."""
    import types

    import torch

    from coursekit.bench import gpu_time, median_time
    if device != "cuda":
        return types.SimpleNamespace(graphs=False, eager=lambda fn: median_time(fn, warmup=1, repeat=2))
    return types.SimpleNamespace(
        graphs=args.timing == "graph", k=args.graph_calls,
        eager=lambda fn: gpu_time(fn, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms),
        cache=torch.empty(256 * 2 ** 20 // 4, dtype=torch.int32, device="cuda"))   # do_bench's L2 flush buffer


def capture(call, k, cache):
    """A CUDA graph of k x (flush L2, call()), or None where call cannot be captured. Replayed, it runs
    the op k times, each reading its input from HBM, with no host work between the kernels: the GPU's
    time. (An eager call of a Triton kernel costs the host 100+ us on the H200 machine used here, more
    than the kernel itself at these sizes, and do_bench's flush hides only ~70 us of it.)"""
    import torch
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):       # warm-up off the capture (allocator, compiled kernels)
            for _ in range(2):
                call() if call is not None else cache.zero_()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(k):
                cache.zero_()
                if call is not None:
                    call()
        graph.replay()                      # the first replay uploads the graph
        torch.cuda.synchronize()
        return graph
    except Exception as err:  # noqa: BLE001 - reported, and the call is timed eagerly instead
        print(f"    graph capture failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
        torch.cuda.synchronize()
        return None


def replay_seconds(graph, k):
    import torch
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / k


def timed(calls, repeats, timing):
    """{name: [seconds per call, ...]}: every call timed `repeats` times, the calls taken in turn
    (coursekit.bench.time_interleaved). With timing.graphs each timing is one replay of a CUDA graph of
    k x (flush, call), less the median of a graph of k flushes timed in the same turns."""
    import statistics

    if not timing.graphs:
        return time_interleaved(calls, repeats=repeats, timer=timing.eager)
    graphs, eager = {}, {}
    for name, call in calls.items():
        graph = capture(call, timing.k, timing.cache)
        if graph is None:
            eager[name] = call
        else:
            graphs[name] = graph
    graphs[" flush"] = capture(None, timing.k, timing.cache)
    times = time_interleaved(graphs, repeats=repeats, timer=lambda g: replay_seconds(g, timing.k))
    flush = statistics.median(times.pop(" flush"))
    out = {name: [max(t - flush, 1e-9) for t in ts] for name, ts in times.items()}
    if eager:
        out.update(time_interleaved(eager, repeats=repeats, timer=timing.eager))
    return out


def make_input(op, dtype, n, total, device):
    """x of (total // n, n), and for layer norm w and b of (n,), seeded by n."""
    import torch
    n_rows = max(1, total // n)
    gen = torch.Generator(device=device).manual_seed(n)   # on the GPU: 32M values from a CPU generator take a second
    x = torch.randn(n_rows, n, generator=gen, device=device).to(dtype)
    w = b = None
    if op == "layer_norm":
        w = torch.randn(n, generator=gen, device=device).to(dtype)
        b = torch.randn(n, generator=gen, device=device).to(dtype)
    return x, w, b


def ours_call(ft, op, x, w, b):
    return (lambda: ft.triton_softmax(x)) if op == "softmax" else (lambda: ft.triton_layer_norm(x, w, b))


def baseline_calls(op, x, w, b, compiled_fn):
    import torch
    import torch.nn.functional as F
    y = torch.empty_like(x)
    if op == "softmax":
        calls = {"torch": lambda: torch.softmax(x, dim=-1), "compiled": compiled_fn and (lambda: compiled_fn(x))}
    else:
        n = x.shape[-1]
        calls = {"torch": lambda: F.layer_norm(x, (n,), w, b),
                 "compiled": compiled_fn and (lambda: compiled_fn(x, w, b))}
    calls["copy"] = lambda: y.copy_(x)
    return calls


def runnable(calls, where):
    """The calls that run once (compiling them outside the timed region); a failure is printed, not fatal."""
    ok = {}
    for name, fn in calls.items():
        if fn is None:
            continue
        try:
            fn()
            ok[name] = fn
        except Exception as err:  # noqa: BLE001 - e.g. torch.compile without a C++ compiler on a CPU box
            _FAILURES.append(name)
            detail = str(err) if len(_FAILURES) <= 2 else str(err)[:200]   # the first ones in full, to debug
            print(f"  {name} failed at {where}: {type(err).__name__}: {detail}")
    return ok


_FAILURES = []


def gbps_fields(method, bytes_moved, times):
    """median, min and max GB/s of one method (the fastest timing gives the max)."""
    import statistics
    if not times:
        return {f"{method}_gbps": float("nan"), f"{method}_gbps_min": float("nan"),
                f"{method}_gbps_max": float("nan")}
    return {f"{method}_gbps": _sig(bytes_moved / statistics.median(times) / 1e9),
            f"{method}_gbps_min": _sig(bytes_moved / max(times) / 1e9),
            f"{method}_gbps_max": _sig(bytes_moved / min(times) / 1e9)}


def _sig(value, digits=5):
    return float(f"{value:.{digits}g}")


def _ratio(a, b):
    return _sig(a / b, 3) if b else float("nan")


def with_config(ft, call, cfg):
    """call() with the implementation's choose_config answering `cfg` (None: its own choice)."""
    if cfg is None:
        return call
    original = ft.choose_config

    def run():
        ft.choose_config = lambda *args, **kwargs: cfg                  # the wrapper asks choose_config
        try:
            return call()
        finally:
            ft.choose_config = original
    return run


def measure_point(ft, op, dtype, n, total, device, time_of, compiled_fn, repeats, cfg=None):
    """One point: every method timed `repeats` times, interleaved, on the same x; a row of the CSV.
    cfg: the LaunchConfig ours runs with (the sweep's winner under --tune), else choose_config's."""
    import torch
    x, w, b = make_input(op, dtype, n, total, device)
    bytes_moved = 2 * x.numel() * x.element_size()   # 1 read + 1 write of x: the least any method can move
    if cfg is None and hasattr(ft, "choose_config"):
        cfg = ft.choose_config(x.shape[0], n, dtype)
        chosen_by = "choose_config"
    else:
        chosen_by = "sweep"
    with torch.no_grad():
        calls = {"ours": with_config(ft, ours_call(ft, op, x, w, b), cfg if chosen_by == "sweep" else None),
                 **baseline_calls(op, x, w, b, compiled_fn)}
        # correctness first: a fast wrong kernel is not a result
        try:
            max_err = (calls["ours"]().float() - calls["torch"]().float()).abs().max().item()
        except Exception as err:  # noqa: BLE001 - e.g. a compile failure: report the point and go on
            print(f"  ours failed at {op} n={n}: {type(err).__name__}: {str(err)[:400]}", flush=True)
            return None
        times = timed(runnable(calls, f"n={n}"), repeats, time_of)
    row = dict(op=op, dtype=str(dtype).replace("torch.", ""), n_cols=n, n_rows=x.shape[0], bytes=bytes_moved)
    for method in METHODS:
        row.update(gbps_fields(method, bytes_moved, times.get(method, [])))
    row.update(ours_over_copy=_ratio(row["ours_gbps"], row["copy_gbps"]),
               ours_over_torch=_ratio(row["ours_gbps"], row["torch_gbps"]),
               max_err=float(f"{max_err:.3g}"), runs=repeats, timing="graph" if time_of.graphs else "eager")
    if cfg is not None:
        row.update(cfg._asdict(), config_from=chosen_by)
    return row


# --- the sweep: which launch configuration wins at each point ------------------------------------

def candidates(ft, n_rows, n_cols, dtype):
    """LaunchConfigs around choose_config's (a full grid would compile for minutes): rows per program
    (BLOCK_M) halved, kept and doubled, each with the warps that give a thread 16 to 256 bytes of x,
    prefetching (num_stages) and the persistent grid switched, and for long rows the looped kernel's
    block width, warps, prefetching and grid, the split strategy for few rows, against a whole row in
    registers."""
    import torch
    import triton
    whole = triton.next_power_of_2(n_cols)
    d = ft.choose_config(n_rows, n_cols, dtype)
    seen, out = set(), []

    def add(block_m, block_n, warps, stages, looped, programs_per_sm, split=False):
        cfg = ft.LaunchConfig(block_m, block_n, warps, stages, looped, programs_per_sm, split)
        if cfg not in seen and 4 <= warps <= 32 and 1 <= block_m <= max(1, triton.next_power_of_2(n_rows)):
            seen.add(cfg)
            out.append(cfg)

    itemsize = dtype.itemsize

    def persistent(block_m, warps, stages=2):                           # choose_config's programs per SM
        return max(1, ft.persistent_programs_per_sm(block_m * whole * itemsize, warps, stages))
    add(*d)                                                             # the default first
    if not d.looped:
        for block_m in (d.BLOCK_M // 2, d.BLOCK_M, d.BLOCK_M * 2):      # rows per program
            if not (1 <= block_m and block_m * whole <= 32768):
                continue
            for warps in (4, 8, 16, 32):                                # bytes of x per thread: 16 .. 256
                per_thread = block_m * whole * itemsize // (32 * warps)
                if 16 <= per_thread <= 256:
                    add(block_m, whole, warps, d.num_stages, False,
                        persistent(block_m, warps, d.num_stages) if d.programs_per_sm else 0)
        add(d.BLOCK_M, whole, d.num_warps, 1, False, 0)                 # one program per tile, no prefetch
        add(d.BLOCK_M, whole, d.num_warps, 1, False, persistent(d.BLOCK_M, d.num_warps, 1))   # no prefetch
        add(d.BLOCK_M, whole, d.num_warps, 2, False, persistent(d.BLOCK_M, d.num_warps, 2))   # prefetch
    if n_cols > 8192:                                                   # long rows: looped, two reads of x
        for block_n in (8192, 16384):
            for warps in (8, 16, 32):
                for stages in (1, 2):
                    if block_n < n_cols:
                        add(1, block_n, warps, stages, True, 0)
        for per_sm in (1, 2):                                           # persistent: fewer rows in L2 at once
            add(1, 8192, 16, 1, True, per_sm)
        if n_rows < ft._sm_count():                                     # few rows: a program per chunk
            for block_n, warps in ((4096, 8), (8192, 8), (8192, 16), (16384, 16)):
                add(1, block_n, warps, 1, True, 0, True)
        if whole <= ft.MAX_BLOCK_SIZE:                                  # ... against the whole row in registers
            for warps in (16, 32):
                add(1, whole, warps, 1, False, 0)
    return out


def sweep_point(ft, op, dtype, n, total, device, time_of, repeats):
    """Rows of the sweep CSV for one point: each candidate, torch and the copy, interleaved."""
    import torch
    x, w, b = make_input(op, dtype, n, total, device)
    bytes_moved = 2 * x.numel() * x.element_size()
    default = ft.choose_config(x.shape[0], n, dtype)
    configs = candidates(ft, x.shape[0], n, dtype)
    ours = ours_call(ft, op, x, w, b)
    calls = {cfg: with_config(ft, ours, cfg) for cfg in configs}
    with torch.no_grad():
        calls.update(baseline_calls(op, x, w, b, None))
        ok = runnable(calls, f"n={n}")
        times = timed(ok, repeats, time_of)
    ref = {m: gbps_fields(m, bytes_moved, times[m])[f"{m}_gbps"] for m in ("torch", "copy")}
    rows = []
    for cfg in configs:
        if cfg not in times:
            continue
        g = gbps_fields("ours", bytes_moved, times[cfg])
        rows.append(dict(op=op, dtype=str(dtype).replace("torch.", ""), n_cols=n, n_rows=x.shape[0],
                         **cfg._asdict(), default=cfg == default, **g, torch_gbps=ref["torch"],
                         copy_gbps=ref["copy"], over_copy=_ratio(g["ours_gbps"], ref["copy"]),
                         over_torch=_ratio(g["ours_gbps"], ref["torch"]), runs=repeats,
                         timing="graph" if time_of.graphs else "eager"))
    return rows


def describe(cfg_row):
    kind = "split" if cfg_row.get("split") else "looped" if cfg_row["looped"] else "single"
    grid = f"persistent x{cfg_row['programs_per_sm']}/SM" if cfg_row["programs_per_sm"] else "1 program/tile"
    return (f"{kind} BLOCK_M={cfg_row['BLOCK_M']} BLOCK_N={cfg_row['BLOCK_N']} warps={cfg_row['num_warps']} "
            f"stages={cfg_row['num_stages']} {grid}")


def warm_point(impl, op, dtype_name, n, total, device):
    """Run every sweep candidate of one point once (in a worker process): each compiles into Triton's
    on-disk cache, where the timing process then finds it."""
    import torch

    from coursekit.impl import Implementation
    ft = Implementation(impl).fused_ops_triton
    dtype = getattr(torch, dtype_name)
    x, w, b = make_input(op, dtype, n, total, device)
    with torch.no_grad():
        for cfg in candidates(ft, x.shape[0], n, dtype):
            with_config(ft, ours_call(ft, op, x, w, b), cfg)()
    if device == "cuda":
        torch.cuda.synchronize()
    return f"{op} {dtype_name} {n}"


def warm(args, points, device):
    """Compile the candidates of all points in `args.warm` processes side by side (Triton compiles one
    kernel at a time per process; a point has ~8 candidates, a run ~150 kernels)."""
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor
    start = time.time()
    unique = sorted({(op, dtype_name, n, total) for op, dtype_name, total, n in points})
    with ProcessPoolExecutor(max_workers=args.warm, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(warm_point, args.impl, *u, device) for u in unique]
        for f in futures:
            try:
                f.result()
            except Exception as err:  # noqa: BLE001 - the timing run reports (and recompiles) what failed here
                print(f"  warm-up failed: {type(err).__name__}: {str(err)[:300]}")
    print(f"compiled the candidates of {len(unique)} points in {args.warm} processes: {time.time() - start:.1f} s",
          flush=True)


def run(args):
    import torch

    from coursekit.bench import device_name
    from coursekit.impl import Implementation

    ft = Implementation(args.impl).fused_ops_triton
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("no CUDA GPU: this benchmark measures GPU bandwidth. Use --smoke to check the script on the CPU.")
    time_of = make_timer(device, args)
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    name = device_name() if device == "cuda" else "cpu (TRITON_INTERPRET=1 smoke run)"
    print(f"device {name}; torch {torch.__version__}; totals {args.totals} elements; {args.repeats} repeats")
    # both ops at each size in turn (a run cut short keeps both ops of the sizes it reached), then --shapes
    points = [(op, dtype_name, total, n) for dtype_name in args.dtypes for total in args.totals
              for n in args.lengths for op in args.ops]
    points += [(op, dtype_name, rows * n, n) for rows, n in args.shapes for dtype_name in args.dtypes
               for op in args.ops]
    tuning = args.sweep or args.tune
    if tuning and not (hasattr(ft, "choose_config") and hasattr(ft, "LaunchConfig")):
        sys.exit(f"--sweep/--tune need choose_config and LaunchConfig in {args.impl or 'model'}.fused_ops_triton")
    if tuning and args.warm:
        warm(args, points, device)
    smoke = "_smoke" if args.smoke else ""
    compiled_softmax = compiled_layer_norm = None
    if not (args.no_compiled or args.sweep):
        compiled_softmax, compiled_layer_norm = compiled(eager_softmax), compiled(eager_layer_norm)
    sweep_path = args.out / f"fused_bandwidth_sweep{smoke}.csv" if args.out and tuning else None
    path = args.out / f"fused_bandwidth_{'smoke' if args.smoke else 'gpu'}.csv" if args.out and not args.sweep else None
    rows_out = []
    # point by point, the sweep (if any) and then the measurement: a run cut short keeps whole points
    with CsvLog(sweep_path) as sweep_log, CsvLog(path) as log:
        for op, dtype_name, total, n in points:
            winner = None
            if tuning:
                rows = sweep_point(ft, op, dtypes[dtype_name], n, total, device, time_of, args.sweep_repeats)
                for r in rows:
                    r["device"] = name
                sweep_log.write(rows)
                if not rows:
                    print(f"  sweep {op} {dtype_name} n={n}: no candidate ran", flush=True)
                    continue
                best = max(rows, key=lambda r: r["ours_gbps"])
                default = next((r for r in rows if r["default"]), {"ours_gbps": float("nan"), "over_copy": float("nan")})
                winner = ft.LaunchConfig(*(best[f] for f in ft.LaunchConfig._fields))
                print(f"  sweep {op:10s} {dtype_name:8s} {rows[0]['n_rows']:6d} x {n:6d}  "
                      f"copy {best['copy_gbps']:6.0f} torch {best['torch_gbps']:6.0f} GB/s | "
                      f"default {default['ours_gbps']:6.0f} ({default['over_copy']:.2f} of copy) | "
                      f"best {best['ours_gbps']:6.0f} ({best['over_copy']:.2f}, "
                      f"{best['over_torch']:.2f}x torch): {describe(best)}", flush=True)
                print(f"  WINNER {op} {dtype_name} rows={rows[0]['n_rows']} n={n}: {tuple(winner)}  "
                      f"default {tuple(ft.choose_config(rows[0]['n_rows'], n, dtypes[dtype_name]))}", flush=True)
                if args.sweep:
                    continue
            row = measure_point(ft, op, dtypes[dtype_name], n, total, device, time_of,
                                compiled_softmax if op == "softmax" else compiled_layer_norm,
                                args.repeats, cfg=winner)
            if row is None:
                continue
            row["device"] = name
            log.write(row)
            rows_out.append(row)
            print(f"  {op:10s} {dtype_name:8s} {row['n_rows']:7d} x {n:6d}  "
                  f"ours {row['ours_gbps']:6.0f} [{row['ours_gbps_min']:.0f}-{row['ours_gbps_max']:.0f}]  "
                  f"torch {row['torch_gbps']:6.0f}  compiled {row['compiled_gbps']:6.0f}  "
                  f"copy {row['copy_gbps']:6.0f} GB/s  ours/copy {row['ours_over_copy']:.2f}  "
                  f"ours/torch {row['ours_over_torch']:.2f}  max|ours-torch| {row['max_err']:.1e}",
                  flush=True)
    if sweep_path:
        print(f"wrote {sweep_path}")
    if args.sweep:
        return
    summary(rows_out)
    if args.smoke:
        print("(smoke run: the kernels ran under the Triton interpreter on the CPU; these numbers mean nothing)")
    if path:
        print(f"wrote {path}")
        try:
            plot(path, path.with_suffix(".png"))
        except ImportError:
            print(f"matplotlib not installed: draw the PNG elsewhere with --plot {path}")


def summary(rows):
    """The lesson's targets, checked on the medians just measured."""
    print(f"\ntargets, on medians, n >= {TARGET_FROM}: ours/copy >= {TARGET_COPY}, ours/torch >= {TARGET_TORCH}")
    for op in sorted({r["op"] for r in rows}):
        for dtype in sorted({r["dtype"] for r in rows if r["op"] == op}):
            sel = [r for r in rows if r["op"] == op and r["dtype"] == dtype and r["n_cols"] >= TARGET_FROM]
            if not sel:
                continue
            worst_copy = min(sel, key=lambda r: r["ours_over_copy"])
            worst_torch = min(sel, key=lambda r: r["ours_over_torch"])
            print(f"  {op:10s} {dtype:8s} ours/copy: min {worst_copy['ours_over_copy']:.2f} "
                  f"({worst_copy['n_rows']} x {worst_copy['n_cols']}) "
                  f"[{'met' if worst_copy['ours_over_copy'] >= TARGET_COPY else 'NOT met'}]   "
                  f"ours/torch: min {worst_torch['ours_over_torch']:.2f} "
                  f"({worst_torch['n_rows']} x {worst_torch['n_cols']}) "
                  f"[{'met' if worst_torch['ours_over_torch'] >= TARGET_TORCH else 'NOT met'}]")


def plot(csv_path, png_path):
    """One panel per (op, dtype, size); medians as lines, the spread as error bars where the CSV has it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    for r in rows:   # the older CSVs have one size per run: total = n_rows * n_cols
        r["total"] = r["n_rows"] * r["n_cols"]
    # the nominal sizes: powers of two (a length like 3000 gives 11184 x 3000, a little under 2^25)
    totals = sorted({r["total"] for r in rows if r["total"] >= 2 ** 20 and not r["total"] & (r["total"] - 1)}) \
        or sorted({r["total"] for r in rows}) or [None]
    series = sorted({(r["op"], r["dtype"]) for r in rows})              # one row of panels per (op, dtype)
    sizes = sorted({_size(r, totals) for r in rows}, reverse=True)      # one column per size
    fig, grid = plt.subplots(len(series), len(sizes), figsize=(5.2 * len(sizes), 4.0 * len(series)), squeeze=False)
    panels = [(op, dtype, size) for op, dtype in series for size in sizes]
    axes = [[ax for row in grid for ax in row]]
    styles = {"ours": ("o-", "tab:red", "ours (Triton)"), "torch": ("s-", "tab:blue", "torch"),
              "compiled": ("^-", "tab:green", "torch.compile(eager)"), "copy": ("--", "0.3", "copy (1R + 1W)")}
    for ax, (op, dtype, size) in zip(axes[0], panels):
        sel = sorted((r for r in rows if (r["op"], r["dtype"], _size(r, totals)) == (op, dtype, size)),
                     key=lambda r: r["n_cols"])
        if not sel:
            ax.set_visible(False)
            continue
        n = [r["n_cols"] for r in sel]
        for method, (style, color, label) in styles.items():
            values = [float(r[f"{method}_gbps"]) for r in sel]
            if f"{method}_gbps_min" in sel[0]:
                low = [v - float(r[f"{method}_gbps_min"]) for v, r in zip(values, sel)]
                high = [float(r[f"{method}_gbps_max"]) - v for v, r in zip(values, sel)]
                ax.errorbar(n, values, yerr=[low, high], fmt=style, color=color, label=label, ms=4, capsize=2)
            else:
                ax.plot(n, values, style, color=color, label=label, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_xticks(n, [str(v) for v in n], rotation=45, fontsize=7)
        ax.minorticks_off()
        ax.set_xlim(min(n) / 1.3, max(n) * 1.5)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("row length n (elements)")
        ax.set_ylabel("GB/s, counting 1 read + 1 write")
        ax.set_title(f"{op}, {dtype}, {size / 2 ** 20:g}M elements")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower center")
    spread = "median of the repeats, bars min..max" if "ours_gbps_min" in rows[0] else "one timing per point"
    if "timing" in rows[0]:
        spread += ("; CUDA-graph replays (the GPU's time)" if rows[0]["timing"] == "graph"
                   else "; eager calls (host launch work included)")
    fig.suptitle(f"{rows[0]['device']}: fixed total size per panel, rows = total / n; {spread}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    print(f"wrote {png_path}")


def _size(row, totals):
    """The panel a row belongs to: the nominal total (2^k) its n_rows * n_cols was cut from."""
    return min(totals, key=lambda t: abs(row["total"] - t)) if totals != [None] else row["total"]


def _shape(text):
    rows, cols = text.lower().split("x")
    return int(rows), int(cols)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, csv_name="fused_bandwidth_gpu.csv")
    parser.add_argument("--ops", nargs="+", default=["softmax", "layer_norm"], choices=["softmax", "layer_norm"])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--lengths", type=int, nargs="+", default=DEFAULT_LENGTHS)
    parser.add_argument("--totals", type=int, nargs="+", default=DEFAULT_TOTALS,
                        help="elements per point (rows = total // n), one panel each")
    parser.add_argument("--shapes", type=_shape, nargs="*", default=[], metavar="ROWSxCOLS",
                        help="more points, e.g. 4096x1024 64x65536 (few long rows, small totals)")
    parser.add_argument("--timing", choices=["graph", "eager"], default="graph",
                        help="graph: CUDA-graph replays, the GPU's time (default); eager: do_bench of the calls, "
                             "host launch work included")
    parser.add_argument("--graph-calls", type=int, default=10, help="calls (each after an L2 flush) per graph")
    parser.add_argument("--warmup-ms", type=float, default=10, help="do_bench warmup per timing (eager)")
    parser.add_argument("--rep-ms", type=float, default=40, help="do_bench budget per timing (eager)")
    parser.add_argument("--sweep", action="store_true",
                        help="only time a grid of launch configurations per point (fused_bandwidth_sweep.csv)")
    parser.add_argument("--tune", action="store_true",
                        help="the sweep, then the full measurement with each point's winner (both CSVs)")
    parser.add_argument("--sweep-repeats", type=int, default=3, help="timings per candidate in the sweep")
    parser.add_argument("--warm", type=int, default=0, metavar="N",
                        help="compile the sweep's candidates in N processes first")
    parser.add_argument("--no-compiled", action="store_true", help="leave out torch.compile (it compiles per shape)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny CPU run under TRITON_INTERPRET=1 to check the script (float32/float16 only)")
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, args.plot.with_suffix(".png"))
        return
    if args.smoke:
        # Must happen before triton is imported (by the implementation module).
        os.environ["TRITON_INTERPRET"] = "1"
        args.totals = [min(t, 2 ** 14) for t in args.totals][:1]
        args.lengths = [n for n in args.lengths if n <= 4096][:2] + [20000]   # one looped length too
        args.shapes = [(r, c) for r, c in args.shapes if r * c <= 2 ** 14]
        args.dtypes = [d for d in args.dtypes if d != "bfloat16"] or ["float32"]   # no bfloat16 in the interpreter
        args.repeats = min(args.repeats, 2)
        args.sweep_repeats = min(args.sweep_repeats, 2)
    run(args)


if __name__ == "__main__":
    main()
