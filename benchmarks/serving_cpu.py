"""L11 benchmark: continuous-batching engine throughput (generated tokens/s) vs max_batch_size (CPU).

    python benchmarks/serving_cpu.py --impl solutions --out benchmarks/results
    python benchmarks/serving_cpu.py --plot benchmarks/results/serving_cpu.csv

The model: a randomly initialised L09 Decoder (weights do not change the
speed), vocab 256, hidden 128, 4 layers, 4 query heads over 2 KV heads
(head_dim 32), SwiGLU 344, float32, one torch thread. The cache: a
PagedKVCache of blocks of 16 tokens, with room for every request at once (so
max_batch_size, not memory, bounds the batch; no preemption).

The request mix (fixed by --seed): --requests requests, all queued at the
start (offline throughput), prompt lengths uniform in [8, 64] tokens and
answer lengths (max_new_tokens, greedy) uniform in [8, 64]. For each
max_batch_size in --batches, engine.run() serves the whole mix --repeats times
(a fresh engine and cache each time, the batch sizes taken in turn so that a
slow spell of a shared machine hits them alike); throughput = generated tokens
/ wall time, median and [min, max] reported. The CSV also keeps the engine's
step counts (prefill and decode steps) and the mean decode batch.

What it shows: one decode step costs the Python and kernel-launch work of
4 layers whether it carries 1 sequence or 16, so tokens/s grows with the
batch until the matmuls (and paged_attention's gather) dominate.
"""
import argparse
import statistics
import time
from pathlib import Path

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
import torch

from coursekit.bench import CsvLog, add_common_args, device_name, read_csv, spread

BLOCK_SIZE = 16


def request_mix(seed, count, vocab):
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (int(n),), generator=gen) for n in torch.randint(8, 65, (count,), generator=gen)]
    news = torch.randint(8, 65, (count,), generator=gen).tolist()
    return prompts, news


def make_model(impl, seed=0):
    torch.manual_seed(seed)
    config = impl.decoder.DecoderConfig(vocab_size=256, hidden_size=128, intermediate_size=344, num_layers=4,
                                        num_heads=4, num_kv_heads=2)
    return impl.decoder.Decoder(config).eval()


def serve(impl, model, prompts, news, max_batch_size):
    """Seconds for engine.run() over the whole mix, and the engine (for its timeline)."""
    config = model.config
    blocks = sum(-(-(len(p) + n) // BLOCK_SIZE) for p, n in zip(prompts, news)) + 1
    cache = impl.paged_kv_cache.PagedKVCache(config.num_layers, blocks, BLOCK_SIZE, config.num_kv_heads,
                                             config.hidden_size // config.num_heads)
    engine = impl.serving.Engine(model, cache, max_batch_size=max_batch_size)
    for p, n in zip(prompts, news):
        engine.add_request(p, n)
    start = time.perf_counter()
    engine.run()
    return time.perf_counter() - start, engine


def plot(csv_path, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    rows.sort(key=lambda r: r["max_batch_size"])
    x = [r["max_batch_size"] for r in rows]
    med = [r["tokens_per_s"] for r in rows]
    low = [r["tokens_per_s"] - r["tokens_per_s_min"] for r in rows]
    high = [r["tokens_per_s_max"] - r["tokens_per_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.errorbar(x, med, yerr=[low, high], fmt="o-", capsize=3, label="engine (median, min-max)")
    ax.plot(x, [med[0] * b for b in x], ":", color="0.5", label="linear in the batch (ideal)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(b) for b in x])
    ax.set_ylim(0, max(med) * 1.3)
    ax.set_xlabel("max_batch_size")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"continuous batching, tiny L09 decoder, {rows[0]['requests']} requests\n{rows[0]['device']}",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    print(f"wrote {png_path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, csv_name="serving_cpu.csv", repeats=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, args.plot.with_suffix(".png"))
        return
    torch.set_num_threads(args.threads)

    from coursekit.impl import Implementation
    impl = Implementation(args.impl)
    model = make_model(impl)
    prompts, news = request_mix(args.seed, args.requests, model.config.vocab_size)
    generated = sum(news)
    print(f"{device_name()}, torch {torch.__version__}; {args.requests} requests, prompts "
          f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens, {generated} tokens to generate")
    serve(impl, model, prompts[:2], [2, 2], 2)                     # warm-up: first-call costs outside the timing
    times = {b: [] for b in args.batches}
    engines = {}
    for _ in range(args.repeats):
        for b in args.batches:                                      # interleaved: drift hits every batch size
            seconds, engines[b] = serve(impl, model, prompts, news, b)
            times[b].append(seconds)
    rows = []
    for b in args.batches:
        timeline = engines[b].timeline
        decodes = [len(ids) for kind, ids in timeline if kind == "decode"]
        rate = [generated / t for t in times[b]]
        row = dict(max_batch_size=b, requests=args.requests, generated_tokens=generated,
                   **spread(times[b], scale=1.0, prefix="seconds", digits=3),
                   tokens_per_s=round(statistics.median(rate), 1), tokens_per_s_min=round(min(rate), 1),
                   tokens_per_s_max=round(max(rate), 1),
                   prefill_steps=sum(kind == "prefill" for kind, _ in timeline), decode_steps=len(decodes),
                   mean_decode_batch=round(sum(decodes) / max(1, len(decodes)), 2),
                   threads=args.threads, device=device_name())
        rows.append(row)
        print(f"max_batch_size {b:3d}: {row['tokens_per_s']:8.1f} tokens/s [{row['tokens_per_s_min']:.1f}, "
              f"{row['tokens_per_s_max']:.1f}]  {row['decode_steps']} decode steps, mean batch "
              f"{row['mean_decode_batch']}")
    base = rows[0]["tokens_per_s"]
    for row in rows:
        print(f"  speed-up over max_batch_size {rows[0]['max_batch_size']}: x{row['tokens_per_s'] / base:.2f} "
              f"at {row['max_batch_size']}")
    if args.out:
        path = Path(args.out) / "serving_cpu.csv"
        with CsvLog(path) as log:
            log.write(rows)
        try:
            plot(path, path.with_suffix(".png"))
        except ImportError:
            print("matplotlib not installed: draw the plot later with --plot")


if __name__ == "__main__":
    main()
