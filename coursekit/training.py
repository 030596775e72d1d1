"""L09's training demo: a Decoder built from your modules, trained on a CPU.

    .venv/bin/python -m coursekit.training --impl solutions --out benchmarks/results

Three experiments, each a plain AdamW loop (no framework) on data the course
ships or makes:

- char: a character-level language model of the course's own lesson texts
  (tutorial/*/README.md), once with multi-head attention (num_kv_heads = H)
  and once with grouped-query attention (num_kv_heads = H / 4): GQA barely
  moves the loss while its KV cache is 4 times smaller.
- copy: a random sequence, a separator, the same sequence again; each token
  to copy sits length + 1 positions back. Full attention learns it in about a
  hundred steps; a sliding window whose receptive field (num_layers * (W - 1))
  is shorter than the distance cannot see the token and stays at chance.
- recall: associative recall (Ba et al. 2016; Arora et al. 2023, "Zoology").
  Key-value pairs, filler, then queries of some keys, each to be answered with
  its value, more than `distance` positions back. Harder: in a few hundred
  steps full attention gets part of the way (the committed run says how far),
  the window again stays at chance.

Each run prints its loss, wall time and training tokens/s; the command line
writes training_cpu.csv (one row per logged step) and training_cpu.png. The
notebook imports the same functions for a shorter live run.
"""
import argparse
import csv
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from coursekit import COURSE_ROOT
from coursekit.impl import Implementation

IGNORE = -100  # F.cross_entropy's ignore_index: positions without a target
CHAR_LR = 1e-2  # AdamW peak learning rate of the character model (3e-3 reaches 2.85 instead of 2.72 in 300 steps)
COPY_TASK = dict(length=16, num_tokens=16)  # distance 17: beyond 2 layers of W = 8 (reach 14)
RECALL_TASK = dict(pairs=4, filler=16, queries=4, num_keys=8, num_values=8, num_filler=4)  # distance >= 17


# --------------------------------------------------------------------- data --

def lesson_corpus(root=None):
    """The lesson texts, concatenated: (text, chars). chars is the sorted
    character set; a token is an index into it."""
    root = Path(root or COURSE_ROOT / "tutorial")
    texts = [p.read_text(encoding="utf-8") for p in sorted(root.glob("*/README.md"))]
    if not texts:
        raise FileNotFoundError(f"no lesson texts under {root}")
    text = "\n\n".join(texts)
    return text, sorted(set(text))


def encode(text, chars):
    index = {c: i for i, c in enumerate(chars)}
    return torch.tensor([index[c] for c in text], dtype=torch.long)


def decode(ids, chars):
    return "".join(chars[i] for i in ids)


def char_batch(data, batch_size, context, generator):
    """batch_size random windows of context + 1 characters: inputs (B, T) and
    next-character targets (B, T)."""
    starts = torch.randint(0, len(data) - context - 1, (batch_size,), generator=generator)
    rows = torch.stack([data[s:s + context + 1] for s in starts.tolist()])  # (B, T + 1)
    return rows[:, :-1], rows[:, 1:]


class RecallTask:
    """Associative recall: `pairs` (key, value) pairs, `filler` random filler
    tokens, then `queries` of the keys, each followed by its value.

        k1 v1 k2 v2 ... kn vn | f f f ... f | k3 v3 k1 v1 ...
                                               ^ target: v3, v1, ...

    Token ids: keys [0, num_keys), values [num_keys, num_keys + num_values),
    filler after that. Only the value after a queried key is a target, so chance
    accuracy is 1 / num_values. The shortest recall distance (from a query to
    its value token) is filler + 1."""

    def __init__(self, pairs=6, filler=24, queries=4, num_keys=16, num_values=16, num_filler=8):
        self.pairs, self.filler, self.queries = pairs, filler, queries
        self.num_keys, self.num_values, self.num_filler = num_keys, num_values, num_filler
        self.vocab_size = num_keys + num_values + num_filler
        self.length = 2 * pairs + filler + 2 * queries
        self.distance = filler + 1  # fewest positions from a query to the value token it recalls

    def batch(self, batch_size, generator):
        B, n = batch_size, self.pairs
        keys = torch.rand(B, self.num_keys, generator=generator).argsort(dim=-1)[:, :n]  # n distinct keys per row
        values = torch.randint(0, self.num_values, (B, n), generator=generator) + self.num_keys
        fill = torch.randint(0, self.num_filler, (B, self.filler), generator=generator) + self.num_keys + self.num_values
        asked = torch.rand(B, n, generator=generator).argsort(dim=-1)[:, :self.queries]  # which pairs are queried
        q_keys, q_values = keys.gather(1, asked), values.gather(1, asked)
        context = torch.stack([keys, values], dim=-1).flatten(1)  # (B, 2n): k1 v1 k2 v2 ...
        tail = torch.stack([q_keys, q_values], dim=-1).flatten(1)  # (B, 2q)
        seq = torch.cat([context, fill, tail], dim=1)  # (B, length)
        inputs, targets = seq[:, :-1], seq[:, 1:].clone()
        is_answer = torch.zeros_like(targets, dtype=torch.bool)
        first_tail = 2 * n + self.filler  # index in seq of the first queried key
        is_answer[:, first_tail::2] = True  # target at input position t is seq[t + 1]: the value after the key
        targets[~is_answer] = IGNORE
        return inputs, targets


class CopyTask:
    """Copying at a distance: `length` random tokens, a separator, the same
    tokens again. Every token of the copy is a target, and the token to copy
    sits exactly length + 1 positions back, so one attention head with a fixed
    relative offset solves it (RoPE makes such a head easy to learn) and a
    model that cannot see length + 1 positions back cannot. Chance accuracy
    is 1 / num_tokens."""

    def __init__(self, length=16, num_tokens=16):
        self.length, self.num_tokens = length, num_tokens
        self.num_values = num_tokens  # for chance = 1 / num_values, as RecallTask
        self.vocab_size = num_tokens + 1  # the separator is the last id
        self.distance = length + 1

    def batch(self, batch_size, generator):
        tokens = torch.randint(0, self.num_tokens, (batch_size, self.length), generator=generator)
        sep = torch.full((batch_size, 1), self.num_tokens)
        seq = torch.cat([tokens, sep, tokens], dim=1)  # (B, 2 * length + 1)
        inputs, targets = seq[:, :-1], seq[:, 1:].clone()
        targets[:, :self.length] = IGNORE  # the first copy is random: nothing to predict
        return inputs, targets


# --------------------------------------------------------------- the model --

def make_model(impl, vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, sliding_window=None,
               seed=0):
    """A Decoder from the implementation package `impl`, seeded. SwiGLU width
    8/3 * hidden rounded to a multiple of 8 (Llama's rule)."""
    torch.manual_seed(seed)
    intermediate = int(math.ceil(hidden_size * 8 / 3 / 8) * 8)
    config = impl.decoder.DecoderConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                                        intermediate_size=intermediate, num_layers=num_layers, num_heads=num_heads,
                                        num_kv_heads=num_kv_heads, sliding_window=sliding_window,
                                        tie_word_embeddings=True)
    model = impl.decoder.Decoder(config)
    with torch.no_grad():  # GPT-2's init: N(0, 0.02), residual outputs scaled down by depth
        for name, p in model.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * num_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                p.normal_(0.0, std)
    return model


def train(model, next_batch, steps, lr=3e-3, weight_decay=0.1, warmup=20, log_every=25, label="", quiet=False):
    """AdamW with linear warm-up and cosine decay. next_batch() -> (inputs,
    targets). Returns a list of dicts: step, loss (mean over the last
    log_every steps), seconds, tokens_per_s."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    history, window, tokens, start = [], [], 0, time.perf_counter()
    for step in range(1, steps + 1):
        inputs, targets = next_batch()
        logits = model(inputs)  # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        window.append(loss.item())
        tokens += inputs.numel()
        if step % log_every == 0 or step == steps:
            seconds = time.perf_counter() - start
            row = dict(step=step, loss=sum(window) / len(window), seconds=seconds, tokens_per_s=tokens / seconds)
            history.append(row)
            window = []
            if not quiet:
                print(f"  {label:>14s} step {step:4d}  loss {row['loss']:.3f}  {seconds:6.1f} s  "
                      f"{row['tokens_per_s']:8.0f} tok/s", flush=True)
    model.eval()
    return history


@torch.no_grad()
def recall_accuracy(model, task, batches=8, batch_size=128, seed=12345):
    """Fraction of queried values predicted exactly (argmax), on fresh sequences."""
    gen = torch.Generator().manual_seed(seed)
    right = total = 0
    for _ in range(batches):
        inputs, targets = task.batch(batch_size, gen)
        answer = targets != IGNORE
        right += int((model(inputs).argmax(dim=-1)[answer] == targets[answer]).sum())
        total += int(answer.sum())
    return right / total


@torch.no_grad()
def char_loss(model, data, context, batches=8, batch_size=32, seed=54321):
    """Mean next-character cross-entropy on fixed held-out windows of `data`."""
    gen = torch.Generator().manual_seed(seed)
    losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
              for x, y in (char_batch(data, batch_size, context, gen) for _ in range(batches))]
    return sum(losses) / len(losses)


# ------------------------------------------------------------- experiments --

def char_experiment(impl, steps=300, context=64, batch_size=16, hidden_size=64, num_layers=2, num_heads=8,
                    kv_heads=(8, 2), lr=CHAR_LR, seed=0, quiet=False):
    """Train the character model once per entry of kv_heads; returns {label: result}."""
    text, chars = lesson_corpus()
    data = encode(text, chars)
    split = int(0.9 * len(data))
    train_data, held_out = data[:split], data[split:]
    results = {}
    for kv in kv_heads:
        label = "MHA" if kv == num_heads else ("MQA" if kv == 1 else f"GQA Hkv={kv}")
        model = make_model(impl, len(chars), hidden_size, num_layers, num_heads, kv, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        history = train(model, lambda: char_batch(train_data, batch_size, context, gen), steps, lr=lr, label=label,
                        quiet=quiet)
        results[label] = dict(model=model, history=history, num_kv_heads=kv, chars=chars,
                              held_out_loss=char_loss(model, held_out, context))
        if not quiet:
            print(f"  {label}: held-out loss {results[label]['held_out_loss']:.3f} nats/char "
                  f"({len(train_data)} training chars, vocabulary {len(chars)})")
    return results


def recall_experiment(impl, steps=400, batch_size=32, windows=(None, 8), task=None, hidden_size=64, num_layers=2,
                      seed=0, quiet=False):
    """Train on a recall task (RecallTask, or CopyTask) once per window (None = full attention)."""
    task = task or RecallTask()
    results = {}
    for window in windows:
        label = "full" if window is None else f"window {window}"
        model = make_model(impl, task.vocab_size, hidden_size, num_layers, 4, 4, sliding_window=window, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        history = train(model, lambda: task.batch(batch_size, gen), steps, label=label, quiet=quiet)
        reach = None if window is None else num_layers * (window - 1)
        results[label] = dict(model=model, history=history, window=window, reach=reach,
                              accuracy=recall_accuracy(model, task))
        if not quiet:
            print(f"  {label}: recall accuracy {results[label]['accuracy']:.3f} (chance {1 / task.num_values:.3f}; "
                  f"answers >= {task.distance} positions back"
                  + ("" if reach is None else f", receptive field {reach}") + ")")
    return results


def plot(experiments, path):
    """experiments: {title: (results, metric name, chance loss or None)} -> one panel each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(experiments), figsize=(5.5 * len(experiments), 4.2), squeeze=False)
    for ax, (title, (results, metric, chance)) in zip(axes[0], experiments.items()):
        for label, r in results.items():
            ax.plot([h["step"] for h in r["history"]], [h["loss"] for h in r["history"]], "o-", ms=3,
                    label=f"{label}: {metric.replace('_', ' ')} {r[metric]:.2f}")
        if chance is not None:
            ax.axhline(chance, color="0.6", ls=":", label=f"chance ({chance:.2f})")
        ax.set(xlabel="step", ylabel="training loss (nats)", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", default=None, help="implementation package (default: $COURSE_IMPL or model)")
    parser.add_argument("--char-steps", type=int, default=300)
    parser.add_argument("--copy-steps", type=int, default=300)
    parser.add_argument("--recall-steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="folder for training_cpu.csv and .png")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    impl = Implementation(args.impl)
    print(f"implementation {impl.name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    start = time.perf_counter()
    print("character LM of the lesson texts, MHA vs GQA:")
    char = char_experiment(impl, steps=args.char_steps)
    first = next(iter(char.values()))
    prompt = encode("The cache ", first["chars"])[None]
    sample = impl.decoder.generate(first["model"], prompt, 160, temperature=0.8, top_k=10,
                                   generator=torch.Generator().manual_seed(0))
    print("  sample (MHA, temperature 0.8, top-k 10):", repr(decode(sample[0].tolist(), first["chars"])))
    copy_task, recall_task = CopyTask(**COPY_TASK), RecallTask(**RECALL_TASK)
    print(f"copying {copy_task.distance} positions back, full attention vs a window of 8 (2 layers reach 14):")
    copy = recall_experiment(impl, steps=args.copy_steps, windows=(None, 8), task=copy_task)
    print(f"associative recall, answers >= {recall_task.distance} back, full attention vs a window of 4 (reach 6):")
    recall = recall_experiment(impl, steps=args.recall_steps, windows=(None, 4), task=recall_task)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "training_cpu.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["experiment", "run", "step", "loss", "seconds", "tokens_per_s", "final_metric"])
            for experiment, results, metric in (("char", char, "held_out_loss"), ("copy", copy, "accuracy"),
                                                ("recall", recall, "accuracy")):
                for label, r in results.items():
                    for h in r["history"]:
                        writer.writerow([experiment, label, h["step"], f"{h['loss']:.4f}", f"{h['seconds']:.2f}",
                                         f"{h['tokens_per_s']:.0f}", f"{r[metric]:.4f}"])
        plot({"character LM of the lesson texts": (char, "held_out_loss", None),
              f"copying {copy_task.distance} back": (copy, "accuracy", math.log(copy_task.num_values)),
              f"associative recall, >= {recall_task.distance} back": (recall, "accuracy",
                                                                      math.log(recall_task.num_values))},
             args.out / "training_cpu.png")
        print(f"wrote {args.out / 'training_cpu.csv'} and training_cpu.png")


if __name__ == "__main__":
    main()
