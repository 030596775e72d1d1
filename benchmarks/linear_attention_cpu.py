"""L13 benchmark: where linear attention overtakes softmax attention, on the CPU.

    python benchmarks/linear_attention_cpu.py --impl solutions --out benchmarks/results

For one sequence of H heads of D dims (float32, causal), at each length L:

- prefill, the whole sequence at once:
  * softmax_sdpa: F.scaled_dot_product_attention(is_causal=True), PyTorch's own
    fused CPU kernel (a FlashAttention-style loop in C++): the fast baseline;
  * softmax_tiled: L05's flash_attention_forward (tiled PyTorch; up to
    --tiled-max, it is a Python loop over tiles and slow by design);
  * linear_chunked: L13's linear_attention_chunked (chunks of --chunk);
- decode, one new token after L cached ones:
  * softmax_decode: one query against an L-entry KV cache (SDPA);
  * linear_decode: one step of linear_attention_recurrent from a state.

Every point is timed --repeat times after a warm-up; the CSV keeps the median
and the spread ((max - min) / median) of the repeats. Memory is the largest
tensor any call creates (recorded by coursekit.testing.LargestTensorRecorder,
which sees every op below autograd): the O(L^2) scores of a naive method, a
(block x block) tile for the tiled ones, the state for the recurrent one. It
is a lower bound on the peak, and the number that decides how it scales.

What to look for: prefill, softmax grows like L^2 and linear like L, so the
lines cross; where depends on D and on the constants (SDPA's C++ loop is far
faster per score than the chunked form's PyTorch calls). Decode: softmax's
step grows with L (it reads the whole cache), linear's is flat.
"""
import argparse
import csv
import math
import statistics
import time
from pathlib import Path

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
import torch
import torch.nn.functional as F

from coursekit.impl import Implementation
from coursekit.testing import LargestTensorRecorder

CSV_NAME, PNG_NAME = "linear_attention_cpu.csv", "linear_attention_cpu.png"


def timed(fn, repeat):
    fn()  # warm-up (allocator, first-call costs)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return median, (max(times) - min(times)) / median


def largest_tensor_bytes(fn):
    with LargestTensorRecorder() as rec:
        fn()
    return rec.elements * 4  # float32


def measure(impl, args):
    H, D = args.heads, args.head_dim
    rows = []
    for L in args.lengths:
        gen = torch.Generator().manual_seed(L)
        q, k, v = (torch.randn(1, H, L, D, generator=gen) * 0.5 for _ in range(3))
        prefill = {
            "softmax_sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "linear_chunked": lambda: impl.linear_attention.linear_attention_chunked(q, k, v, chunk_size=args.chunk),
        }
        if L <= args.tiled_max:
            prefill["softmax_tiled"] = lambda: impl.flash_attention.flash_attention_forward(
                q, k, v, causal=True, block_q=128, block_k=128)
        q1, k1, v1 = (t[:, :, -1:].clone() for t in (q, k, v))  # own storage: the recorder counts storages
        fk = impl.linear_attention.elu_feature_map(k[:, :, :-1])
        state = (torch.einsum("bhld,bhle->bhde", fk, v[:, :, :-1]), fk.sum(2))
        decode = {
            "softmax_decode": lambda: F.scaled_dot_product_attention(q1, k, v),
            "linear_decode": lambda: impl.linear_attention.linear_attention_recurrent(q1, k1, v1, state=state),
        }
        for phase, methods in (("prefill", prefill), ("decode", decode)):
            for method, fn in methods.items():
                repeat = args.repeat if phase == "decode" or L <= 8192 else max(3, args.repeat // 3)
                median, spread = timed(fn, repeat)
                memory = largest_tensor_bytes(fn)
                rows.append(dict(phase=phase, method=method, seq_len=L, heads=H, head_dim=D, ms=median * 1e3,
                                 spread=spread, repeats=repeat, largest_tensor_bytes=memory))
                print(f"  {phase:7s} {method:15s} L={L:6d}  {median * 1e3:10.3f} ms  (spread {spread:5.1%}, "
                      f"{repeat} runs)  largest tensor {'-' if memory is None else f'{memory / 2**20:9.2f} MiB'}",
                      flush=True)
    return rows


def summarise(rows):
    by = {(r["phase"], r["method"], r["seq_len"]): r["ms"] for r in rows}
    lengths = sorted({r["seq_len"] for r in rows})
    print("\nratios (softmax time / linear time; > 1 means linear is faster):")
    for L in lengths:
        pre = by[("prefill", "softmax_sdpa", L)] / by[("prefill", "linear_chunked", L)]
        dec = by[("decode", "softmax_decode", L)] / by[("decode", "linear_decode", L)]
        tiled = by.get(("prefill", "softmax_tiled", L))
        tiled = f"{tiled / by[('prefill', 'linear_chunked', L)]:7.2f}" if tiled else "      -"
        print(f"  L={L:6d}  prefill: sdpa/chunked {pre:7.2f}  tiled/chunked {tiled}   decode step: {dec:7.2f}")


def plot(csv_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(csv.DictReader(open(csv_path)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, phase in zip(axes, ("prefill", "decode")):
        for method in sorted({r["method"] for r in rows if r["phase"] == phase}):
            pts = [(int(r["seq_len"]), float(r["ms"])) for r in rows if r["phase"] == phase and r["method"] == method]
            ax.loglog(*zip(*pts), "o-", label=method)
        ax.set_xlabel("sequence length L (log)")
        ax.set_ylabel("ms (log)")
        ax.set_title(f"{phase}: causal, one sequence" if phase == "prefill" else "decode: one token after L")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(csv_path).with_name(PNG_NAME), dpi=110)
    print(f"wrote {Path(csv_path).with_name(PNG_NAME)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", help="implementation package (default: $COURSE_IMPL or model)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--tiled-max", type=int, default=4096, help="longest L for L05's tiled loop")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1: stable timings)")
    parser.add_argument("--out", type=Path, help=f"folder for {CSV_NAME} and {PNG_NAME}")
    parser.add_argument("--plot", type=Path, metavar="CSV", help="only redraw the PNG next to this CSV")
    args = parser.parse_args()
    if args.plot:
        return plot(args.plot)
    torch.set_num_threads(args.threads)
    impl = Implementation(args.impl)
    print(f"# CPU, {args.threads} thread(s), torch {torch.__version__}; H={args.heads}, D={args.head_dim}, "
          f"float32, chunk {args.chunk}")
    rows = measure(impl, args)
    summarise(rows)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / CSV_NAME
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {path}")
        plot(path)


if __name__ == "__main__":
    main()
