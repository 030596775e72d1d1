"""L07 benchmark: sliding-window attention against masked full attention on the CPU.

    .venv/bin/python benchmarks/sliding_window_cpu.py --impl solutions --threads 1 --out benchmarks/results

At a fixed sequence length (default L = 4096, batch 1, 4 heads of D = 64,
float32) the script times, for windows W = 16 ... L:
  - ours: sliding_window_attention(q, k, v, W, block_size=64), which scores
    only the key blocks that intersect each query block's band;
  - masked full attention (the baseline): softmax(q k^T / sqrt(D) + band mask) v
    written with torch primitives, which builds all L x L scores whatever W is;
  - F.scaled_dot_product_attention with the same boolean band mask (PyTorch's
    fused CPU kernel: no L x L matrix held at once, but still every score computed);
and records the peak memory of the tensors each one creates (PeakLiveBytes
below: a dispatch mode that adds up the storages of op results while they are
alive; the inputs and the mask are not counted, the output is). All three are
checked against each other before timing. Ratios are against the masked
full attention timed in the same run.

What to look for: the baseline's time and its peak memory (three (B, H, L, L)
tensors: scores, masked scores, probabilities) do not depend on W. Ours follows
the dotted guide, proportional to the number of scores in the band (~ L * W
while W << L), once W is a few times the block size; below that, the fixed
cost of a dozen small ops per query block sets a floor. Its peak memory is
the output (held twice: the blocks and their torch.cat) plus one query
block's band tile, (B, H, block, < W + 2 block), independent of L: a few MiB
against hundreds. One thread (--threads 1) keeps the timings steadier on a
shared machine; the ratios are what to read. At W = L ours does the full causal work block by block, and
the python loop over blocks costs a little more than the single big matmul.
The fused SDPA with a mask computes every score too, so it is flat in W as well.
"""
import argparse
import csv
import math
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
from coursekit.bench import median_time, print_table
from coursekit.impl import Implementation
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def band_mask(length, window):
    """(L, L) bool, 0 <= p - j < W (torch primitives: the baseline builds its own mask)."""
    distance = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    return (distance >= 0) & (distance < window)


def masked_full_attention(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, L, D) @ (B, H, D, L) -> (B, H, L, L)
    return torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1) @ v


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of the storages created by the ops run inside it, counting a
    storage from the op that made it until the last tensor on it is freed
    (weakref.finalize on every result). Storages that existed before
    (`existing`: the inputs) are not counted, so neither are their views."""

    def __init__(self, existing):
        super().__init__()
        self.existing = {t.untyped_storage().data_ptr() for t in existing}
        self.live = {}  # storage data_ptr -> [bytes, tensors alive on it]
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr == 0 or ptr in self.existing:
                continue
            if ptr not in self.live:
                self.live[ptr] = [t.untyped_storage().nbytes(), 0]
                self.current += self.live[ptr][0]
                self.peak = max(self.peak, self.current)
            self.live[ptr][1] += 1
            weakref.finalize(t, self._release, ptr)
        return out

    def _release(self, ptr):
        entry = self.live.get(ptr)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.current -= entry[0]
                del self.live[ptr]


def peak_bytes(fn, *inputs):
    with torch.no_grad(), PeakLiveBytes(inputs) as tracker:
        fn()
    return tracker.peak


def band_pairs(length, window):
    """(query, key) pairs inside the band: sum over p of min(p + 1, W)."""
    w = min(window, length)
    return w * (w + 1) // 2 + (length - w) * w


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = rows[0]
    config = (f"L={first['seq']}, B={first['batch']}, H={first['heads']}, D={first['head_dim']}, float32, "
              f"block_size={first['block_size']}; {first['threads']} thread(s), torch {first['torch']}")
    w = [r["window"] for r in rows]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax0.loglog(w, [r["ours_ms"] for r in rows], "o-", color="tab:green", label="sliding_window_attention (ours)")
    ax0.loglog(w, [r["masked_full_ms"] for r in rows], "s-", color="tab:red", label="masked full attention")
    ax0.loglog(w, [r["sdpa_mask_ms"] for r in rows], "^-", color="tab:orange", label="SDPA + band mask")
    last = rows[-1]
    ax0.loglog(w, [last["ours_ms"] * r["band_fraction"] / last["band_fraction"] for r in rows], ":", color="0.5",
               label="proportional to the band's scores (~ L·W)")
    ax0.set_xscale("log", base=2)
    ax0.set_xticks(w, [str(x) for x in w])
    ax0.minorticks_off()
    ax0.set_xlabel("window W")
    ax0.set_ylabel("ms per forward")
    ax0.set_title("time vs window (same run)")
    ax0.legend(fontsize=8)
    ax0.grid(True, which="both", alpha=0.3)

    ax1.loglog(w, [r["ours_peak_bytes"] / 2**20 for r in rows], "o-", color="tab:green", label="ours")
    ax1.loglog(w, [r["masked_full_peak_bytes"] / 2**20 for r in rows], "s-", color="tab:red",
               label="masked full attention")
    ax1.loglog(w, [r["sdpa_mask_peak_bytes"] / 2**20 for r in rows], "^-", color="tab:orange", label="SDPA + band mask")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(w, [str(x) for x in w])
    ax1.minorticks_off()
    ax1.set_xlabel("window W")
    ax1.set_ylabel("peak memory of created tensors (MiB)")
    ax1.set_title("peak memory vs window (inputs not counted)")
    ax1.legend(fontsize=8)
    ax1.grid(True, which="both", alpha=0.3)
    fig.suptitle(config, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", help="implementation package (default: $COURSE_IMPL or model)")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--windows", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="folder for sliding_window_cpu.csv and sliding_window_cpu.png")
    parser.add_argument("--plot", type=Path, metavar="CSV", help="only redraw sliding_window_cpu.png next to CSV")
    args = parser.parse_args()
    if args.plot:
        with open(args.plot) as f:
            rows = [{key: (value if key == "torch" else float(value) if "." in value or "e" in value else int(value))
                     for key, value in r.items()} for r in csv.DictReader(f)]
        plot(rows, args.plot.with_name("sliding_window_cpu.png"))
        print(f"wrote {args.plot.with_name('sliding_window_cpu.png')}")
        return
    sw = Implementation(args.impl).sliding_window
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.heads, args.seq, args.head_dim)
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    rows = []
    for window in args.windows:
        mask = band_mask(args.seq, window)
        ours = lambda: sw.sliding_window_attention(q, k, v, window, block_size=args.block_size)  # noqa: E731
        full = lambda: masked_full_attention(q, k, v, mask)  # noqa: E731
        sdpa = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
        reference = full()
        for name, fn in (("ours", ours), ("SDPA + mask", sdpa)):
            err = (fn() - reference).abs().max().item()
            if err > 1e-4:
                raise SystemExit(f"W={window}: {name} differs from masked full attention by {err:.3g}")
        t_ours = median_time(ours, warmup=1, repeat=args.repeat)
        t_full = median_time(full, warmup=1, repeat=args.repeat)
        t_sdpa = median_time(sdpa, warmup=1, repeat=args.repeat)
        rows.append(dict(window=window, ours_ms=t_ours * 1e3, masked_full_ms=t_full * 1e3, sdpa_mask_ms=t_sdpa * 1e3,
                         full_over_ours=t_full / t_ours, sdpa_over_ours=t_sdpa / t_ours,
                         ours_peak_bytes=peak_bytes(ours, q, k, v, mask),
                         masked_full_peak_bytes=peak_bytes(full, q, k, v, mask),
                         sdpa_mask_peak_bytes=peak_bytes(sdpa, q, k, v, mask),
                         band_fraction=band_pairs(args.seq, window) / (args.seq * args.seq),
                         seq=args.seq, batch=args.batch, heads=args.heads, head_dim=args.head_dim,
                         block_size=args.block_size, threads=torch.get_num_threads(), torch=torch.__version__))
        print(f"  W={window}: ours {t_ours * 1e3:.1f} ms, masked full {t_full * 1e3:.1f} ms", flush=True)

    config = (f"L={args.seq}, B={args.batch}, H={args.heads}, D={args.head_dim}, float32, "
              f"block_size={args.block_size}; {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(config)
    print_table(["W", "ours ms", "masked full ms", "SDPA+mask ms", "full/ours", "ours peak", "full peak",
                 "band / L^2"],
                [[r["window"], f"{r['ours_ms']:.1f}", f"{r['masked_full_ms']:.1f}", f"{r['sdpa_mask_ms']:.1f}",
                  f"{r['full_over_ours']:.1f}x", f"{r['ours_peak_bytes'] / 2**20:.2f} MiB",
                  f"{r['masked_full_peak_bytes'] / 2**20:.0f} MiB", f"{r['band_fraction']:.3f}"] for r in rows])

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "sliding_window_cpu.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                writer.writerow({key: (f"{x:.6g}" if isinstance(x, float) else x) for key, x in r.items()})
        plot(rows, args.out / "sliding_window_cpu.png")
        print(f"wrote {args.out / 'sliding_window_cpu.csv'} and {args.out / 'sliding_window_cpu.png'}")


if __name__ == "__main__":
    main()
