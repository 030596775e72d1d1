"""L09 benchmark: prefill and decode tokens/s of our Decoder vs the same Hugging Face model, CPU.

    .venv/bin/python benchmarks/decoder_cpu.py --impl solutions --threads 1 --out benchmarks/results
    .venv/bin/python benchmarks/decoder_cpu.py --impl solutions --parity     # max |logits - reference| per config

One LlamaForCausalLM with seeded random weights (coursekit.reference.hf_decoder:
nothing is downloaded; default 4 layers, hidden 256, 8 heads, 2 key/value heads,
vocabulary 512, float32, SDPA attention) and Decoder.from_hf of it, so both hold
the same weights. In the same run, alternating:

- prefill: one forward over a B x P prompt that fills the caches (ours:
  new_caches; Hugging Face: its DynamicCache), tokens/s = B * P / time;
- decode: N single-token steps after that prefill, greedy, tokens/s = B * N / time.

Each is repeated --repeat times; the table gives the median and the spread
(min - max) over the repeats and the ratio ours / Hugging Face of the medians.
Both run eagerly under torch.inference_mode. What to look for: at this size a
decoding step is dominated by the fixed cost of a few hundred small eager ops
per token, so the ratio mostly measures per-op overhead (our input checks, the
mask built from L03/L07 pieces, L01's attention with its own checks) against
Hugging Face's fused SDPA call; prefill is dominated by the matmuls and the
ratio is closer to 1.

--parity builds the test suite's configs (MHA, GQA, MQA, tied, a Mistral window
shorter than the sequence; left padding) and prints the max abs difference of
our logits from the float64 reference, in float64 and float32.
"""
import argparse
import csv
import statistics
import time
from pathlib import Path

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
import torch

from coursekit.bench import print_table
from coursekit.impl import Implementation
from coursekit.reference import hf_decoder

PARITY_CONFIGS = {
    "mha": dict(num_heads=6, num_kv_heads=6),
    "gqa (rope_theta 5e5)": dict(num_heads=6, num_kv_heads=2, rope_theta=500000.0),
    "mqa": dict(num_heads=6, num_kv_heads=1),
    "tied embeddings": dict(num_heads=6, num_kv_heads=3, tie_word_embeddings=True),
    "mistral window 5": dict(num_heads=6, num_kv_heads=2, sliding_window=5),
}


def parity(impl):
    ids = torch.randint(1, 61, (3, 13), generator=torch.Generator().manual_seed(1))
    mask = torch.stack([torch.arange(13) >= 13 - n for n in (13, 9, 4)]).long()  # left padding
    ids = ids.masked_fill(mask == 0, 0)
    real = mask.bool()
    rows = []
    with torch.inference_mode():
        for name, kw in PARITY_CONFIGS.items():
            reference = hf_decoder(**kw)(ids, attention_mask=mask).logits  # float64, hf_exact
            row = [name]
            for dtype in (torch.float64, torch.float32):
                hf = hf_decoder(**kw, dtype=dtype, exact=True)
                got = impl.decoder.Decoder.from_hf(hf).eval()(ids, attention_mask=mask)
                row.append(f"{(got.double() - reference)[real].abs().max().item():.2e}")
                if dtype == torch.float32:  # Hugging Face's own float32 error, for scale
                    row.append(f"{(hf(ids, attention_mask=mask).logits.double() - reference)[real].abs().max().item():.2e}")
            rows.append(row)
    print_table(["config", "ours float64", "ours float32", "HF float32"], rows)
    return rows


def spread(times, work):
    rates = sorted(work / t for t in times)
    return statistics.median(rates), rates[0], rates[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--parity", action="store_true", help="print the parity table and stop")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    impl = Implementation(args.impl)
    print(f"implementation {impl.name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.parity:
        parity(impl)
        return

    hf = hf_decoder(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 8 * 8,
                    num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads, dtype=torch.float32)
    ours = impl.decoder.Decoder.from_hf(hf).eval()
    B, P, N = args.batch, args.prompt, args.new_tokens
    prompt = torch.randint(0, args.vocab, (B, P), generator=torch.Generator().manual_seed(0))

    def ours_run():
        caches = ours.new_caches(B, P + N)
        start = time.perf_counter()
        logits = ours(prompt, caches=caches)
        prefilled = time.perf_counter()
        token = logits[:, -1:].argmax(-1)
        out = [token]
        for _ in range(N - 1):
            token = ours(token, caches=caches)[:, -1:].argmax(-1)
            out.append(token)
        return prefilled - start, time.perf_counter() - prefilled, torch.cat(out, 1)

    def hf_run():
        from transformers import DynamicCache
        cache = DynamicCache()
        start = time.perf_counter()
        logits = hf(prompt, past_key_values=cache, use_cache=True).logits
        prefilled = time.perf_counter()
        token = logits[:, -1:].argmax(-1)
        out = [token]
        for _ in range(N - 1):
            token = hf(token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
            out.append(token)
        return prefilled - start, time.perf_counter() - prefilled, torch.cat(out, 1)

    times = {"ours": ([], []), "hf": ([], [])}
    with torch.inference_mode():
        tokens = {name: run()[2] for name, run in (("ours", ours_run), ("hf", hf_run))}  # warm-up
        same = torch.equal(tokens["ours"], tokens["hf"])
        for _ in range(args.repeat):
            for name, run in (("ours", ours_run), ("hf", hf_run)):  # alternate: both see the same machine load
                prefill_s, decode_s, _ = run()
                times[name][0].append(prefill_s)
                times[name][1].append(decode_s)
    print(f"model: {args.layers} layers, hidden {args.hidden}, {args.heads} heads, {args.kv_heads} kv heads, "
          f"vocab {args.vocab}, float32; B={B}, prompt {P}, {N} new tokens, {args.repeat} repeats; "
          f"greedy tokens identical: {same}")
    rows, table = [], []
    for phase, index, work in (("prefill", 0, B * P), ("decode", 1, B * (N - 1))):
        ours_med, ours_lo, ours_hi = spread(times["ours"][index], work)
        hf_med, hf_lo, hf_hi = spread(times["hf"][index], work)
        rows.append(dict(phase=phase, ours_tok_s=ours_med, ours_min=ours_lo, ours_max=ours_hi, hf_tok_s=hf_med,
                         hf_min=hf_lo, hf_max=hf_hi, ratio=ours_med / hf_med, threads=torch.get_num_threads(),
                         batch=B, prompt=P, new_tokens=N, repeats=args.repeat))
        table.append([phase, f"{ours_med:.0f} ({ours_lo:.0f}-{ours_hi:.0f})", f"{hf_med:.0f} ({hf_lo:.0f}-{hf_hi:.0f})",
                      f"{ours_med / hf_med:.2f}"])
    print_table(["phase", "ours tok/s median (min-max)", "HF tok/s median (min-max)", "ours / HF"], table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "decoder_cpu.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in row.items()})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
