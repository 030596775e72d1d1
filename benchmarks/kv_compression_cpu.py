"""L12: memory vs quality of KV-cache compression on the course's tiny trained model (CPU).

    .venv/bin/python benchmarks/kv_compression_cpu.py --impl solutions --out benchmarks/results

1. Trains L09's character model of the lesson texts (coursekit.training, GQA with
   Hkv = 2, a few hundred AdamW steps: about a minute on two cores).
2. Outlier channels: the mean |k| and |v| per channel of every layer's cached
   keys (after RoPE) and values on held-out text; the ratio of the largest
   channel to the median one says how uneven the channels are.
3. Quality vs memory, teacher-forced on held-out windows: a prefill of `prompt`
   characters, then one character at a time through the compressed cache.
   Per method: next-character loss, agreement of the argmax with the float
   cache, max |logit error| vs the float cache, KV bytes per token (what the
   cache stores, averaged over the decoding), decode tokens/s.
   Methods: float cache; QuantizedKVCache 8/4/2 bits (residual 16, groups of 16);
   retention modes baseline / soft_delete / sparse_attention (threshold 0.01);
   eviction to a budget; sinks (4) + a window; L07's window alone.
Median and spread (min-max) over --repeats held-out batches. Writes
kv_compression_cpu.csv, kv_compression_cpu.md, kv_compression_outliers.csv and kv_compression_cpu.png.
"""
import argparse
import csv
import statistics
import time
from pathlib import Path

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
import torch
import torch.nn.functional as F

from coursekit.impl import Implementation
from coursekit.training import char_batch, char_loss, encode, lesson_corpus, make_model, train


def train_char_model(impl, steps, context, seed=0, seconds=None):
    text, chars = lesson_corpus()
    data = encode(text, chars)
    split = int(0.9 * len(data))
    model = make_model(impl, len(chars), hidden_size=96, num_layers=3, num_heads=8, num_kv_heads=2, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    if seconds is not None:  # a wall-clock budget: as many steps of 50 as fit (a loaded machine gets fewer)
        start, done = time.perf_counter(), 0
        while done < steps and time.perf_counter() - start < seconds:
            train(model, lambda: char_batch(data[:split], 24, context, gen), 50, warmup=1 if done else 20,
                  label="char", quiet=True)
            done += 50
        steps = done
    else:
        train(model, lambda: char_batch(data[:split], 24, context, gen), steps, label="char", quiet=True)
    model.eval()
    return model, data[split:], chars, steps


@torch.no_grad()
def channel_profile(impl, model, x):
    """Mean |k|, |v| per channel (num_kv_heads * head_dim of them) of each layer's cache after a forward."""
    caches = model.new_caches(x.shape[0], x.shape[1])
    model(x, caches=caches)
    rows = []
    for layer, cache in enumerate(caches):
        for name, t in (("keys", cache.k_cache), ("values", cache.v_cache)):
            per_channel = t.abs().mean(dim=(0, 2)).flatten()  # (Hkv * D,)
            rows.append(dict(layer=layer, tensor=name, max_over_median=float(per_channel.max() / per_channel.median()),
                             max=float(per_channel.max()), median=float(per_channel.median()),
                             profile=per_channel.tolist()))
    return rows


def float_bytes_per_token(model):
    cfg = model.config
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * model.embed_tokens.weight.element_size()


@torch.no_grad()
def run_cache(model, x, prompt, caches, bytes_of):
    """Teacher-forced: prefill x[:, :prompt], then one token at a time -> (logits of positions prompt-1.., bytes/token, s)."""
    outs = [model(x[:, :prompt], caches=caches)[:, -1:]]
    sizes = []
    start = time.perf_counter()
    for t in range(prompt, x.shape[1] - 1):
        outs.append(model(x[:, t:t + 1], caches=caches))
        sizes.append(bytes_of(caches) / caches[0].seq_len)
    return torch.cat(outs, dim=1), statistics.mean(sizes), time.perf_counter() - start


@torch.no_grad()
def run_retention(impl, model, x, prompt, mode, capacity=None, num_sink=0):
    E = impl.kv_eviction
    caches = E.new_retention_caches(model, x.shape[0], capacity or x.shape[1], num_sink=num_sink)
    logits, _ = E.retention_forward(model, x[:, :prompt], caches, mode)
    outs, sizes, tokens = [logits[:, -1:]], [], []
    per_token = float_bytes_per_token(model)
    start = time.perf_counter()
    for t in range(prompt, x.shape[1] - 1):
        logits, info = E.retention_forward(model, x[:, t:t + 1], caches, mode)
        outs.append(logits)
        held = float(torch.stack(info["tokens"]).float().mean()) - 1  # cached keys the query may attend to
        tokens.append(held)
        sizes.append(per_token * float(caches[0].num_tokens.float().mean()) / (t + 1))  # slots holding a token
    return torch.cat(outs, dim=1), statistics.mean(sizes), time.perf_counter() - start, statistics.mean(tokens)


def methods(impl, model, batch, length, residual=16, group=16, budget=48, num_sink=4):
    cfg = model.config
    Q, E, S = impl.kv_quant, impl.kv_eviction, impl.sliding_window
    per_token = float_bytes_per_token(model)

    def quant(bits):
        return lambda: [Q.QuantizedKVCache(batch, cfg.num_kv_heads, length, cfg.head_dim, bits=bits,
                                           residual=residual, group_size=group) for _ in model.layers]
    table = {
        "float cache": ("cache", lambda: model.new_caches(batch, length), lambda c: per_token * c[0].seq_len),
        "int8 (KIVI, residual 16)": ("cache", quant(8), lambda c: sum(x.nbytes for x in c) / batch),
        "int4 (KIVI, residual 16)": ("cache", quant(4), lambda c: sum(x.nbytes for x in c) / batch),
        "int2 (KIVI, residual 16)": ("cache", quant(2), lambda c: sum(x.nbytes for x in c) / batch),
        f"sinks {num_sink} + window {budget - num_sink}": (
            "cache", lambda: [E.SinkKVCache(batch, cfg.num_kv_heads, num_sink, budget - num_sink + 1, cfg.head_dim)
                              for _ in model.layers], lambda c: sum(x.nbytes for x in c) / batch),
        f"window {budget} alone (L07)": (
            "cache", lambda: [S.RollingKVCache(batch, cfg.num_kv_heads, budget + 1, cfg.head_dim)
                              for _ in model.layers], lambda c: per_token * min(c[0].seq_len, budget)),
        "retention: baseline": ("retention", "baseline", None),
        "retention: soft_delete": ("retention", "soft_delete", None),
        "retention: sparse_attention": ("retention", "sparse_attention", None),
        f"retention eviction to {budget}": ("retention", "baseline", budget),
    }
    return table


def evaluate(impl, model, held_out, repeats, batch, length, prompt):
    rows = {}
    for rep in range(repeats):
        gen = torch.Generator().manual_seed(1000 + rep)
        x, y = char_batch(held_out, batch, length, gen)
        target = y[:, prompt - 1:length - 1]
        reference = None
        for name, (kind, a, b) in methods(impl, model, batch, length).items():
            if kind == "cache":
                caches = a()
                if name.startswith("window"):  # the L07 cache needs a model with that window
                    model.config.sliding_window = caches[0].window
                    for layer in model.layers:
                        layer.self_attn.window = caches[0].window
                try:
                    logits, bpt, seconds = run_cache(model, x, prompt, caches, b)
                finally:
                    model.config.sliding_window = None
                    for layer in model.layers:
                        layer.self_attn.window = None
                tokens = None
            else:
                logits, bpt, seconds, tokens = run_retention(impl, model, x, prompt, a, capacity=b,
                                                             num_sink=4 if b else 0)
            if reference is None:
                reference = logits
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten()).item()
            agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
            err = (logits - reference).abs().max().item()
            r = rows.setdefault(name, dict(loss=[], agree=[], err=[], bytes=[], tps=[], tokens=[]))
            r["loss"].append(loss), r["agree"].append(agree), r["err"].append(err), r["bytes"].append(bpt)
            r["tps"].append(batch * (length - 1 - prompt) / seconds)
            if tokens is not None:
                r["tokens"].append(tokens)
    return rows


def spread(values):
    return statistics.median(values), min(values), max(values)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=192)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--train-seconds", type=float, default=None, help="stop training after this wall time")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    impl = Implementation(args.impl)
    start = time.perf_counter()
    model, held_out, chars, args.steps = train_char_model(impl, args.steps, context=128, seconds=args.train_seconds)
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s; held-out loss "
          f"{char_loss(model, held_out, 128):.3f} nats/char")
    x, _ = char_batch(held_out, 8, 128, torch.Generator().manual_seed(7))
    profile = channel_profile(impl, model, x)
    for r in profile:
        print(f"  layer {r['layer']} {r['tensor']:6s}: largest channel mean|.| / median channel = "
              f"{r['max_over_median']:.2f}")
    rows = evaluate(impl, model, held_out, args.repeats, args.batch, args.length, args.prompt)
    header = ("| method | KV bytes / token | loss (nats/char) | argmax agreement | max abs logit error | "
              "attended keys | decode tokens/s |\n| --- | --- | --- | --- | --- | --- | --- |")
    lines = [header]
    for name, r in rows.items():
        fmt = lambda v, f: "{} ({}–{})".format(*(format(x, f) for x in spread(v)))
        tokens = fmt(r["tokens"], ".1f") if r["tokens"] else "all"
        lines.append(f"| {name} | {statistics.median(r['bytes']):.0f} | {fmt(r['loss'], '.4f')} | "
                     f"{fmt(r['agree'], '.4f')} | {fmt(r['err'], '.3g')} | {tokens} | {fmt(r['tps'], '.0f')} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "kv_compression_cpu.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", "repeat", "kv_bytes_per_token", "loss", "agreement", "max_logit_error",
                        "attended_keys", "tokens_per_s"])
            for name, r in rows.items():
                for i in range(len(r["loss"])):
                    w.writerow([name, i, f"{r['bytes'][i]:.1f}", f"{r['loss'][i]:.5f}", f"{r['agree'][i]:.5f}",
                                f"{r['err'][i]:.4g}", f"{r['tokens'][i]:.2f}" if r["tokens"] else "",
                                f"{r['tps'][i]:.1f}"])
        with (args.out / "kv_compression_outliers.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["layer", "tensor", "max_over_median", "max", "median", "per_channel_mean_abs"])
            for r in profile:
                w.writerow([r["layer"], r["tensor"], f"{r['max_over_median']:.3f}", f"{r['max']:.4f}",
                            f"{r['median']:.4f}", " ".join(f"{v:.3f}" for v in r["profile"])])
        cmd = (f"benchmarks/kv_compression_cpu.py --steps {args.steps} --repeats {args.repeats} --batch {args.batch} "
               f"--length {args.length} --prompt {args.prompt}")
        (args.out / "kv_compression_cpu.md").write_text(
            f"# KV-cache compression on the tiny character model (CPU)\n\n`{cmd}`, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads. Median (min–max) over {args.repeats} held-out batches of "
            f"{args.batch} x {args.length} characters; prefill {args.prompt}, then teacher-forced decoding.\n\n"
            + table + "\n")
        plot(rows, profile, args.out / "kv_compression_cpu.png")
        print(f"wrote {args.out}/kv_compression_cpu.{{csv,md,png}} and kv_compression_outliers.csv")


def plot(rows, profile, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, r in rows.items():
        ax0.scatter(statistics.median(r["bytes"]), statistics.median(r["loss"]), label=name)
    ax0.set(xlabel="KV bytes per token (all layers)", ylabel="held-out loss (nats/char)", xscale="log",
            title="quality vs memory")
    ax0.legend(fontsize=7)
    last = [r for r in profile if r["layer"] == max(p["layer"] for p in profile)]
    for r in last:
        ax1.plot(r["profile"], "o-", ms=3, label=f"{r['tensor']} (max/median {r['max_over_median']:.1f})")
    ax1.set(xlabel="channel (kv head * head_dim + dim)", ylabel="mean |.| over tokens",
            title=f"last layer: keys have outlier channels, values do not")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
