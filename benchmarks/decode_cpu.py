"""L04 benchmark: greedy decoding with and without the KV cache on the CPU.

    .venv/bin/python benchmarks/decode_cpu.py --impl solutions --out benchmarks/results

A small random TinyDecoder (default: 2 layers, d_model 64, 2 heads of D = 32,
vocabulary 256, batch 1, a 16-token prompt) generates N new tokens with
greedy_generate, once with use_cache=True and once with use_cache=False, and
the script prints tokens/s for both and their ratio (the speed-up, measured in
the same run), plus the cache's memory: the sum of the buffers' nbytes over
the layers against the formula 2 * layers * B * H * max_len * D * bytes.

What to look for: with the cache, every step feeds ONE token through the model
and attends over the t cached keys, so tokens/s stays nearly flat as N grows
(at this size a step is dominated by the fixed cost of several dozen small eager ops).
Without it, step t recomputes every layer for all t tokens and builds a t x t
attention matrix per head, so a step costs O(t) in the projections and MLP and
O(t^2) in attention: tokens/s falls roughly like 1/N at first and like 1/N^2
once attention dominates, and the speed-up grows with N. Memory is exactly the
formula: two preallocated (B, H, max_len, D) buffers per layer.

The default sizes keep the whole run to about 3 minutes on a 2-core CPU; the
uncached run at N = 2048 is most of that (its last steps build 2048 x 2048
score matrices). Pass smaller --new-tokens for a quick look.
"""
import argparse
import csv
import time
from pathlib import Path

import torch

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
from coursekit.bench import print_table
from coursekit.impl import Implementation


def timed(fn, repeat):
    """Median wall seconds of fn() over `repeat` calls (a generation is long
    enough that one call is a measurement; median_time's warm-ups would double
    the cost of the slowest runs)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def cache_bytes_formula(layers, batch, heads, max_len, head_dim, dtype):
    """2 (K and V) * layers * B * H * max_len * D * bytes per element."""
    return 2 * layers * batch * heads * max_len * head_dim * torch.empty(0, dtype=dtype).element_size()


def plot(rows, path, config):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["new_tokens"] for r in rows]
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(15, 4.3))
    ax0.plot(n, [r["cached_tok_s"] for r in rows], "o-", color="tab:green", label="with KV cache")
    ax0.plot(n, [r["uncached_tok_s"] for r in rows], "s-", color="tab:red", label="without (recompute all)")
    ax0.set_xscale("log", base=2)
    ax0.set_yscale("log")
    ax0.set_xlabel("new tokens N")
    ax0.set_ylabel("tokens / s (whole generation)")
    ax0.set_title("decoding throughput")
    ax0.legend()
    ax0.grid(True, which="both", alpha=0.3)

    ax1.plot(n, [r["speedup"] for r in rows], "o-", color="tab:blue")
    for r in rows:
        ax1.annotate(f"{r['speedup']:.1f}x", (r["new_tokens"], r["speedup"]), textcoords="offset points",
                     xytext=(0, 7), ha="center", fontsize=8)
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_ylim(top=max(r["speedup"] for r in rows) * 2)  # room for the labels
    ax1.set_xlabel("new tokens N")
    ax1.set_ylabel("time without / time with the cache")
    ax1.set_title("speed-up from the cache (same run)")
    ax1.grid(True, which="both", alpha=0.3)

    max_len = [r["max_len"] for r in rows]
    ax2.plot(max_len, [r["formula_bytes"] / 2**20 for r in rows], "-", color="0.6", lw=4, alpha=0.6,
             label="2·layers·B·H·max_len·D·bytes")
    ax2.plot(max_len, [r["cache_bytes"] / 2**20 for r in rows], "o", color="tab:purple",
             label="sum of the buffers' nbytes")
    ax2.set_xlabel("max_len = prompt + N")
    ax2.set_ylabel("cache memory (MiB)")
    ax2.set_title("cache memory: measured vs formula")
    ax2.legend()
    ax2.grid(True, alpha=0.3)
    fig.suptitle(config, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", help="implementation package (default: $COURSE_IMPL or model)")
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--out", type=Path, help="folder for decode_cpu.csv and decode_cpu.png")
    args = parser.parse_args()
    kv = Implementation(args.impl).kv_cache

    torch.manual_seed(0)
    max_positions = args.prompt + max(args.new_tokens)
    model = kv.TinyDecoder(vocab_size=args.vocab, d_model=args.d_model, num_heads=args.heads,
                           num_layers=args.layers, max_positions=max_positions).eval()
    prompt = torch.randint(0, args.vocab, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
    for use_cache in (True, False):  # warm-up: first calls pay for allocator and kernel setup
        kv.greedy_generate(model, prompt, 32, use_cache=use_cache)

    head_dim = args.d_model // args.heads
    rows = []
    for n in args.new_tokens:
        repeat = 3 if n <= 512 else 1
        cached_s = timed(lambda: kv.greedy_generate(model, prompt, n, use_cache=True), repeat)
        uncached_s = timed(lambda: kv.greedy_generate(model, prompt, n, use_cache=False), 1)
        max_len = args.prompt + n
        caches = model.new_caches(args.batch, max_len)  # what use_cache=True allocates for this N
        rows.append(dict(new_tokens=n, max_len=max_len,
                         cached_tok_s=args.batch * n / cached_s, uncached_tok_s=args.batch * n / uncached_s,
                         speedup=uncached_s / cached_s, cached_s=cached_s, uncached_s=uncached_s,
                         cache_bytes=sum(c.nbytes for c in caches),
                         formula_bytes=cache_bytes_formula(args.layers, args.batch, args.heads, max_len, head_dim,
                                                           torch.float32)))
        print(f"  N={n}: {cached_s:.2f} s with the cache, {uncached_s:.2f} s without", flush=True)

    config = (f"TinyDecoder: {args.layers} layers, d_model {args.d_model}, {args.heads} heads of D={head_dim}, "
              f"vocab {args.vocab}, batch {args.batch}, prompt {args.prompt}, float32; "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(config)
    print_table(["new tokens", "cached tok/s", "uncached tok/s", "speed-up", "cache bytes", "formula bytes"],
                [[r["new_tokens"], f"{r['cached_tok_s']:.0f}", f"{r['uncached_tok_s']:.1f}", f"{r['speedup']:.1f}x",
                  r["cache_bytes"], r["formula_bytes"]] for r in rows])
    if all(r["cache_bytes"] == r["formula_bytes"] for r in rows):
        print("cache memory = 2 * layers * B * H * max_len * D * 4 bytes in every row")
    else:
        print("cache memory differs from the formula: does KVCache allocate (B, H, max_seq_len, D) buffers?")

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "decode_cpu.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        plot(rows, args.out / "decode_cpu.png", config)
        print(f"wrote {args.out / 'decode_cpu.csv'} and {args.out / 'decode_cpu.png'}")


if __name__ == "__main__":
    main()
