"""L13 benchmark: the L09 decoder with softmax attention vs with linear attention, trained the same way.

    python benchmarks/linear_vs_softmax_cpu.py --impl solutions --out benchmarks/results

One Decoder from your modules (L09, built by coursekit.training.make_model),
trained twice with the same seed, data, steps and optimiser: once as it is
(softmax attention) and once with every layer's attention replaced by
linear_attention_chunked (elu + 1 features, same projections, same RoPE, same
GQA mapping) — use_linear_attention below swaps the function and nothing else,
so the comparison isolates the attention. Three tasks from coursekit.training:

- char: the character-level language model of the course's lesson texts;
  held-out loss in nats per character;
- copy: copy a 16-token sequence after a separator (each answer 17 back);
- recall: associative recall, key-value pairs then queries of the keys.

The CSV records, per (task, attention): the final training loss, the held-out
loss or the accuracy, wall time and training tokens/s. Expect the char loss
to be close, and the two lookup tasks to separate the two: a fixed-size state
must hold every pair it may be asked for (L13 section 4).
"""
import argparse
import csv
import time
from pathlib import Path

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
import torch

from coursekit import training
from coursekit.impl import Implementation


def use_linear_attention(model, impl, chunk_size=64):
    """Replace every layer's attention function by causal linear attention (in place; returns model)."""
    config = model.config
    H, Hkv = config.num_heads, config.num_kv_heads
    D = config.hidden_size // H
    apply_rope = impl.rope.apply_rope
    chunked = impl.linear_attention.linear_attention_chunked

    for layer in model.layers:
        attn = layer.self_attn

        def forward(x, cos, sin, key_padding_mask=None, cache=None, attn=attn):
            if cache is not None or key_padding_mask is not None:
                raise ValueError("the linear-attention swap serves training on unpadded batches only")
            B, L, _ = x.shape
            q = attn.q_proj(x).view(B, L, H, D).transpose(1, 2)              # (B, H, L, D)
            k = attn.k_proj(x).view(B, L, Hkv, D).transpose(1, 2)            # (B, Hkv, L, D)
            v = attn.v_proj(x).view(B, L, Hkv, D).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
            out = chunked(q, k, v, chunk_size=chunk_size)                      # (B, H, L, D)
            return attn.o_proj(out.transpose(1, 2).reshape(B, L, H * D))

        attn.forward = forward
    return model


def run(impl, attention, args):
    rows = []
    swap = (lambda m: use_linear_attention(m, impl)) if attention == "linear" else (lambda m: m)
    # char LM
    text, chars = training.lesson_corpus()
    data = training.encode(text, chars)
    split = int(0.9 * len(data))
    model = swap(training.make_model(impl, len(chars), 64, 2, 8, 8, seed=0))
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    history = training.train(model, lambda: training.char_batch(data[:split], 16, 64, gen), args.char_steps,
                             lr=training.CHAR_LR, label=f"char {attention}")
    rows.append(dict(task="char", attention=attention, steps=args.char_steps, final_loss=history[-1]["loss"],
                     metric="held-out loss (nats/char)", value=training.char_loss(model, data[split:], 64),
                     seconds=time.perf_counter() - start, tokens_per_s=history[-1]["tokens_per_s"]))
    # copy and recall
    for name, task, steps in (("copy", training.CopyTask(**training.COPY_TASK), args.copy_steps),
                              ("recall", training.RecallTask(), args.recall_steps)):
        model = swap(training.make_model(impl, task.vocab_size, 64, 2, 4, 4, seed=0))
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        history = training.train(model, lambda: task.batch(32, gen), steps, label=f"{name} {attention}")
        rows.append(dict(task=name, attention=attention, steps=steps, final_loss=history[-1]["loss"],
                         metric=f"accuracy (chance {1 / task.num_values:.3f})" if name == "recall" else "accuracy",
                         value=training.recall_accuracy(model, task), seconds=time.perf_counter() - start,
                         tokens_per_s=history[-1]["tokens_per_s"]))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", help="implementation package (default: $COURSE_IMPL or model)")
    parser.add_argument("--char-steps", type=int, default=300)
    parser.add_argument("--copy-steps", type=int, default=300)
    parser.add_argument("--recall-steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    impl = Implementation(args.impl)
    rows = run(impl, "softmax", args) + run(impl, "linear", args)
    print("\n| task | attention | steps | final train loss | metric | value | s | tokens/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['task']} | {r['attention']} | {r['steps']} | {r['final_loss']:.3f} | {r['metric']} | "
              f"{r['value']:.3f} | {r['seconds']:.0f} | {r['tokens_per_s']:.0f} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "linear_vs_softmax_cpu.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out / 'linear_vs_softmax_cpu.csv'}")


if __name__ == "__main__":
    main()
