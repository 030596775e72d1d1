"""L09 benchmark on a GPU: our Decoder with L05's Triton attention vs the same Hugging Face model with SDPA.

    python benchmarks/decoder_gpu.py --impl solutions --out benchmarks/results

One LlamaForCausalLM with seeded random weights (coursekit.reference.hf_decoder,
nothing downloaded; default 16 layers, hidden 2048, 16 heads of D = 128, 4
key/value heads, vocabulary 32000, bfloat16, attn_implementation="sdpa") and
Decoder.from_hf of it with set_attention_backend("triton"): every attention call
goes through triton_flash_attention (GQA inside the kernel, bottom-right causal,
so a decoding step is Lq = 1 against the cache). The rest of the model (RMSNorm,
RoPE, SwiGLU, the L04 KVCache writes) is eager PyTorch in both.

For each batch size and prompt length, in the same run:
- prefill: one forward over B x P tokens filling the caches (ours: new_caches;
  Hugging Face: DynamicCache), tokens/s = B * P / time;
- decode: N single-token greedy steps after it, tokens/s = B * N / time.
Each (batch, prompt) point is run --repeats times (default 5), ours and Hugging
Face taken in turn (coursekit.bench.time_interleaved: a slow spell of a shared
GPU hits both), with torch.cuda.synchronize around each phase (CUDA graphs and
torch.compile are not used by either side); the medians, the spread (min - max)
and the ratio ours / HF of the medians are printed and written to decoder_gpu.csv.
Also checked: both generate the same greedy tokens on the first run (bfloat16
ties can make a token differ; the table says so), and, before the timing, how
far each bfloat16 model's prefill logits are from the float32 model's (same
weights, RoPE frequencies in float32) and how often its top-1 token agrees with
it. Hugging Face's bf16 model rounds its RoPE inverse frequencies to bf16
(`.to(bfloat16)` casts the inv_freq buffer), ours computes them in float32: at
positions in the hundreds their angles differ by radians, so the two models'
greedy tokens part early; the closeness line shows which one the float32 model
agrees with.

What to look for: prefill is matmul-bound and the attention kernel matters at
long prompts; decoding at batch 1 is bound by kernel-launch overhead of ~10
eager ops per layer on both sides, and by reading the weights and the KV cache
at larger batches.
"""
import argparse
import statistics
import time

import _path  # noqa: F401  (before coursekit: the course folder on sys.path)
import torch

from coursekit.bench import CsvLog, add_common_args, device_name, print_table, time_interleaved
from coursekit.impl import Implementation
from coursekit.reference import hf_decoder


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_once(step_fn, prefill_fn, prompt, N):
    sync()
    start = time.perf_counter()
    logits = prefill_fn(prompt)
    sync()
    prefilled = time.perf_counter()
    token = logits[:, -1:].argmax(-1)
    out = [token]
    for _ in range(N - 1):
        token = step_fn(token)[:, -1:].argmax(-1)
        out.append(token)
    sync()
    return prefilled - start, time.perf_counter() - prefilled, torch.cat(out, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, csv_name="decoder_gpu.csv")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompts", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--backend", default="triton", choices=["triton", "reference"])
    parser.add_argument("--device", default="cuda", help="cuda; 'cpu' only for a smoke test of the script itself")
    args = parser.parse_args()
    if args.plot:
        raise SystemExit("decoder_gpu.py draws no plot: its CSV is a table (print it with column -s, -t)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("decoder_gpu.py needs a CUDA GPU (benchmarks/decoder_cpu.py runs on the CPU)")
    impl = Implementation(args.impl)
    device = args.device
    hf = hf_decoder(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 8 * 8,
                    num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads, dtype=torch.bfloat16)
    hf = hf.to(device)
    ours = impl.decoder.Decoder.from_hf(hf).eval().set_attention_backend(args.backend)
    name = device_name()
    print(f"implementation {impl.name}, {name}, torch {torch.__version__}; "
          f"{args.layers} layers, hidden {args.hidden}, {args.heads} heads, {args.kv_heads} kv heads, bfloat16; "
          f"ours: {args.backend} attention, HF: {hf.config._attn_implementation}")
    from transformers import DynamicCache

    with torch.inference_mode():  # how close each bf16 model is to the float32 one: the greedy-token column's context
        ids = torch.randint(0, args.vocab, (1, 512), generator=torch.Generator().manual_seed(1)).to(device)
        # the float32 reference: the same (bf16-rounded) weights, but built in float32, so its RoPE
        # inverse frequencies stay float32 (.to(bfloat16) rounds HF's inv_freq buffer: 0.5623 -> 0.5625,
        # an angle error that grows with the position; ours computes them in float32 in every dtype)
        ref_model = hf_decoder(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                               intermediate_size=args.hidden * 8 // 3 // 8 * 8, num_heads=args.heads,
                               num_kv_heads=args.kv_heads, dtype=torch.float32)
        ref_model.load_state_dict({k: v.float() for k, v in hf.state_dict().items()})
        ref = ref_model.to(device)(ids).logits.float()
        del ref_model
        for who, logits in (("ours", ours(ids)), ("HF", hf(ids).logits)):
            logits = logits.float()
            top1 = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
            print(f"bf16 {who:4s} vs float32 HF, 512 prompt positions: max |logit error| "
                  f"{(logits - ref).abs().max().item():.3f} (logits' std {ref.std().item():.2f}), "
                  f"top-1 agreement {top1:.1%}")
        del ref

    rows, table = [], []
    for B in args.batches:
        for P in args.prompts:
            N = args.new_tokens
            prompt = torch.randint(0, args.vocab, (B, P), generator=torch.Generator().manual_seed(0)).to(device)

            def ours_run():
                caches = ours.new_caches(B, P + N)
                return run_once(lambda t: ours(t, caches=caches), lambda p: ours(p, caches=caches), prompt, N)

            def hf_run():
                cache = DynamicCache()
                return run_once(lambda t: hf(t, past_key_values=cache, use_cache=True).logits,
                                lambda p: hf(p, past_key_values=cache, use_cache=True).logits, prompt, N)

            with torch.inference_mode():
                tokens = {name: run()[2] for name, run in (("ours", ours_run), ("hf", hf_run))}  # warm-up, compile
                same = int((tokens["ours"] == tokens["hf"]).all(dim=0).long().cumprod(0).sum())  # leading equal
                # each run times its own two phases: the "timer" returns (prefill s, decode s)
                runs = time_interleaved({"ours": ours_run, "hf": hf_run}, repeats=args.repeats,
                                        timer=lambda run: run()[:2])
            for phase, index, work in (("prefill", 0, B * P), ("decode", 1, B * (N - 1))):
                ours_rates = sorted(work / t[index] for t in runs["ours"])
                hf_rates = sorted(work / t[index] for t in runs["hf"])
                o, h = statistics.median(ours_rates), statistics.median(hf_rates)
                rows.append(dict(batch=B, prompt=P, phase=phase, ours_tok_s=o, ours_min=ours_rates[0],
                                 ours_max=ours_rates[-1], hf_tok_s=h, hf_min=hf_rates[0], hf_max=hf_rates[-1],
                                 ratio=o / h, same_leading_tokens=same, new_tokens=N, runs=args.repeats,
                                 device=name))
                table.append([B, P, phase, f"{o:.0f} ({ours_rates[0]:.0f}-{ours_rates[-1]:.0f})",
                              f"{h:.0f} ({hf_rates[0]:.0f}-{hf_rates[-1]:.0f})", f"{o / h:.2f}", f"{same}/{N}"])
    print_table(["B", "prompt", "phase", "ours tok/s (min-max)", "HF tok/s (min-max)", "ours / HF",
                 "same greedy tokens"], table)
    if args.out:
        path = args.out / "decoder_gpu.csv"
        with CsvLog(path) as log:
            log.write([{k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in row.items()} for row in rows])
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
