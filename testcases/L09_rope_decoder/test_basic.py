"""L09 basic suite: RoPE (the cos/sin tables, rotate-half, the rotation against
complex multiplication, scores that depend only on p - j), RMSNorm against its
formula, and the decoder against Hugging Face: the same logits as
LlamaForCausalLM / MistralForCausalLM for MHA, GQA and MQA, tied embeddings,
left and right padding and a sliding window shorter than the sequence;
prefill + decoding with the caches equal to one full forward; greedy tokens
equal to hf.generate; seeded sampling with top-k.

Run: ./course test L09    (or: pytest testcases/L09_rope_decoder -m basic)
Expected values come from coursekit.reference: rope_rotate_ref (RoPE as
complex multiplication in float64), rms_norm_ref, and hf_decoder, a small
transformers model with seeded random weights (nothing is downloaded). Float64
references use hf_exact: Hugging Face rounds RoPE angles and RMSNorm statistics
to float32 even in a float64 model, so those two forwards run in float64 there;
everything else (attention, masks, positions, caches, generate) is Hugging Face's.
The decoder uses your L01, L03, L04, L06 and L07 modules: finish them first.
"""
import math
import os

import pytest
import torch

from coursekit.reference import hf_decoder, rms_norm_ref, rope_rotate_ref
from coursekit.testing import assert_close, randn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub

LAYOUT_HINT = (
    "RoPE pairs dim i with dim i + D/2 (rotate-half, Hugging Face / GPT-NeoX): rotate_half(x) = "
    "cat(-x[..., D/2:], x[..., :D/2]) and cos/sin = cat(freqs, freqs). Pairing adjacent dims (2i, 2i+1) is "
    "Meta's interleaved layout: a different model for the same weights")
THETA_HINT = "theta_i = base ** (-2i / D) for i = 0 .. D/2 - 1 (the exponent steps by 2/D, not 1/D)"
POSITION_HINT = (
    "positions count real tokens: position = cumsum(attention_mask) - 1 (left padding starts each row at 0), "
    "and new tokens after a cache continue from its seq_len (L04's token_positions)")
PARITY_HINT = (
    "the usual causes: rotate-half vs interleaved RoPE, SwiGLU gate/up swapped (down(silu(gate(x)) * up(x))), "
    "RMSNorm with a mean subtracted, RoPE applied after the cache, a window off by one, positions")

# name: hf_decoder keyword arguments
CONFIGS = {
    "mha": dict(num_heads=6, num_kv_heads=6),
    "gqa_llama3_base": dict(num_heads=6, num_kv_heads=2, rope_theta=500000.0),
    "mqa": dict(num_heads=6, num_kv_heads=1),
    "tied_embeddings": dict(num_heads=6, num_kv_heads=3, tie_word_embeddings=True),
    "mistral_window_5": dict(num_heads=6, num_kv_heads=2, sliding_window=5),
}
SEQ = 13  # longer than every window above


def ours(impl, hf_model):
    return impl.decoder.Decoder.from_hf(hf_model).eval()


def token_ids(batch, length, vocab=61, seed=1):
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_padded(batch_lengths, total):
    """attention_mask (B, total) long with row b's real tokens right-aligned (left padding)."""
    return torch.stack([torch.arange(total) >= total - n for n in batch_lengths]).long()


def hf_logits(hf_model, ids, attention_mask=None):
    with torch.no_grad():
        return hf_model(ids, attention_mask=attention_mask).logits


# --------------------------------------------------------------------- RoPE --

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("head_dim,base", [(8, 10000.0), (6, 10000.0), (16, 500000.0)])
def test_cos_sin_follow_the_definition(impl, head_dim, base, dtype):
    positions = torch.tensor([0, 1, 2, 7, 100, 1023])
    cos, sin = impl.rope.rope_cos_sin(positions, head_dim, base=base, dtype=dtype)
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    angle = positions.double()[:, None] * base ** (-2 * i / head_dim)  # (L, D/2)
    angle = torch.cat([angle, angle], dim=-1)  # (L, D): dims i and i + D/2 share an angle
    # float32 angles: theta_i and p * theta_i each round by 2^-24 relative, so the angle is off by up
    # to 2 * 6e-8 * |angle|, and cos/sin by as much (their slope is <= 1), on top of the table's atol.
    atol = None if dtype == torch.float64 else 1e-5 + 1.2e-7 * float(angle.abs().max())
    for name, got, want in (("cos", cos, angle.cos()), ("sin", sin, angle.sin())):
        assert got.dtype == dtype, f"{name} has dtype {got.dtype}, expected {dtype}"
        assert_close(got, want, atol=atol, what=f"{name} (D={head_dim}, base={base})",
                     hint=THETA_HINT + "; " + LAYOUT_HINT)


def test_cos_sin_keep_the_leading_dims_of_positions(impl):
    positions = torch.tensor([[0, 1, 2, 3], [0, 0, 0, 1]])  # (B, L): one row per sequence
    cos, sin = impl.rope.rope_cos_sin(positions, 10, dtype=torch.float64)
    assert cos.shape == sin.shape == (2, 4, 10), f"cos/sin of positions (2, 4) must be (2, 4, 10), got {tuple(cos.shape)}"
    one, _ = impl.rope.rope_cos_sin(positions[1], 10, dtype=torch.float64)
    assert_close(cos[1], one, what="cos of row 1", hint="each row's angles come from its own positions")


def test_rotate_half(impl):
    x = torch.arange(1.0, 9.0).double()  # (8,): pairs (1,5) (2,6) (3,7) (4,8)
    got = impl.rope.rotate_half(x[None, None, None])
    want = torch.tensor([-5.0, -6.0, -7.0, -8.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert_close(got[0, 0, 0], want, what="rotate_half(1..8)", hint=LAYOUT_HINT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_apply_rope_is_complex_rotation(impl, dtype):
    B, H, L, D = 2, 3, 11, 10
    x = randn(B, H, L, D, seed=3, dtype=dtype)
    positions = torch.stack([torch.arange(L), torch.arange(L) + 37])  # (B, L): row 1 starts at 37
    cos, sin = impl.rope.rope_cos_sin(positions, D, dtype=dtype)
    got = impl.rope.apply_rope(x, cos, sin)
    assert got.shape == x.shape and got.dtype == dtype, f"apply_rope gave {tuple(got.shape)} {got.dtype}"
    want = rope_rotate_ref(x, positions[:, None, :])  # (B, 1, L) broadcasts over heads
    assert_close(got, want, what="apply_rope", hint=LAYOUT_HINT + "; (B, L, D) cos/sin need a head axis: (B, 1, L, D)")


def test_rotation_keeps_lengths(impl):
    x = randn(1, 2, 9, 12, seed=4, dtype=torch.float64)
    cos, sin = impl.rope.rope_cos_sin(torch.arange(9) * 50, 12, dtype=torch.float64)
    y = impl.rope.apply_rope(x, cos, sin)
    assert_close(y.norm(dim=-1), x.norm(dim=-1), what="|apply_rope(x)| per vector",
                 hint="a rotation keeps every pair's length: x * cos + rotate_half(x) * sin with the SAME angle "
                      "in cos and sin for dims i and i + D/2")


def test_scores_depend_only_on_the_distance(impl):
    """q rotated to position p, k rotated to position j: q.k is a function of p - j."""
    D, L = 8, 12
    q = randn(D, seed=5, dtype=torch.float64).expand(1, 1, L, D)  # the same vector at every position
    k = randn(D, seed=6, dtype=torch.float64).expand(1, 1, L, D)
    cos, sin = impl.rope.rope_cos_sin(torch.arange(L), D, dtype=torch.float64)
    scores = impl.rope.apply_rope(q, cos, sin)[0, 0] @ impl.rope.apply_rope(k, cos, sin)[0, 0].T  # (L, L): [p, j]
    for shift in range(1, L):
        assert_close(scores[shift:, shift:], scores[:-shift, :-shift], what=f"scores[p + {shift}, j + {shift}]",
                     hint="with a rotation R(p) per position, R(p)q . R(j)k = q . R(j - p)k: shifting both "
                          "positions must not change the score. " + LAYOUT_HINT)
    assert not torch.allclose(scores[0, 1], scores[1, 0]), "q.k must depend on the sign of p - j too"


# ------------------------------------------------------------------ RMSNorm --

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_rms_norm_matches_the_formula(impl, dtype, eps):
    x = randn(3, 5, 24, seed=7, dtype=dtype) * 0.3 + 0.8  # a mean far from 0: RMSNorm does not subtract it
    norm = impl.rope.RMSNorm(24, eps=eps).to(dtype)
    assert tuple(norm.weight.shape) == (24,), f"weight must have shape (24,), got {tuple(norm.weight.shape)}"
    assert torch.equal(norm.weight.detach(), torch.ones(24, dtype=dtype)), "RMSNorm's weight starts at ones"
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * randn(24, seed=8, dtype=dtype))
    assert_close(norm(x), rms_norm_ref(x, norm.weight, eps), what=f"RMSNorm(eps={eps})",
                 hint="y = weight * x / sqrt(mean(x^2) + eps): no mean subtracted, no bias, eps inside the sqrt")


def test_rms_norm_of_large_half_inputs(impl):
    x = randn(4, 32, seed=9, dtype=torch.float16) * 400  # x^2 ~ 1.6e5: past float16's 65504
    norm = impl.rope.RMSNorm(32).to(torch.float16)
    got = norm(x)
    assert got.dtype == torch.float16, f"RMSNorm of float16 input must return float16, got {got.dtype}"
    assert_close(got, rms_norm_ref(x, None, 1e-6), what="RMSNorm(float16 x ~ 400)",
                 hint="compute mean(x^2) in float32 (as LlamaRMSNorm) and cast back: squares overflow float16")


# ---------------------------------------------------------- parity with HF --

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_hugging_face(impl, name, dtype):
    reference = hf_logits(hf_decoder(**CONFIGS[name]), token_ids(2, SEQ))  # float64, exact
    hf = hf_decoder(**CONFIGS[name], dtype=dtype)
    with torch.no_grad():
        got = ours(impl, hf)(token_ids(2, SEQ))
    assert got.dtype == dtype, f"logits have dtype {got.dtype}, expected the model's {dtype}"
    assert_close(got, reference, what=f"logits ({name}, {dtype})", hint=PARITY_HINT)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", ["gqa_llama3_base", "mistral_window_5"])
def test_padded_batch_matches_hugging_face(impl, name, side):
    lengths = [SEQ, 9, 4]
    mask = left_padded(lengths, SEQ) if side == "left" else left_padded(lengths, SEQ).flip(-1)
    ids = token_ids(3, SEQ).masked_fill(mask == 0, 0)
    hf = hf_decoder(**CONFIGS[name])
    reference = hf_logits(hf, ids, mask)
    with torch.no_grad():
        got = ours(impl, hf)(ids, attention_mask=mask)
    real = mask.bool()  # logits at padding positions mean nothing
    assert_close(got[real], reference[real], what=f"logits of real tokens ({side} padding, {name})",
                 hint=POSITION_HINT + "; padding keys must be masked (attention_mask over all keys)")


def test_positions_count_real_tokens_only(impl):
    """A mask with holes (a packed or middle-padded row): positions skip the holes.

    Left padding alone cannot show this: it shifts a whole row by a constant,
    and RoPE scores depend only on differences. Holes change the differences.
    Hugging Face's forward takes positions from position_ids (generate computes
    cumsum(mask) - 1), so the reference passes them explicitly."""
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1]])
    ids = token_ids(2, 11).masked_fill(mask == 0, 0)
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    hf = hf_decoder(**CONFIGS["gqa_llama3_base"])
    with torch.no_grad():
        reference = hf(ids, attention_mask=mask, position_ids=positions).logits
    model = ours(impl, hf)
    caches = model.new_caches(2, 11)
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        chunked = torch.cat([model(ids[:, :4], attention_mask=mask[:, :4], caches=caches),
                             model(ids[:, 4:], attention_mask=mask, caches=caches)], dim=1)
    real = mask.bool()
    for what, got in (("one forward", full), ("prefill + chunk", chunked)):
        assert_close(got[real], reference[real], what=f"logits with holes in attention_mask ({what})",
                     hint=POSITION_HINT + "; column indices count the padding")


def test_state_dict_names_are_hugging_face_names(impl):
    hf = hf_decoder(**CONFIGS["gqa_llama3_base"])
    model = ours(impl, hf)
    want = {k.removeprefix("model."): tuple(v.shape) for k, v in hf.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == want, (f"state dict differs from Hugging Face's (without 'model.'):\n  missing {sorted(set(want) - set(got))}"
                         f"\n  extra {sorted(set(got) - set(want))}")


def test_tied_lm_head_is_the_embedding(impl):
    hf = hf_decoder(**CONFIGS["tied_embeddings"])
    model = ours(impl, hf)
    storages = {p.untyped_storage().data_ptr() for p in (model.lm_head.weight, model.embed_tokens.weight)}
    assert len(storages) == 1, ("tie_word_embeddings=True: lm_head.weight must BE embed_tokens.weight (one storage); "
                                "two copies train apart")
    n_ours, n_hf = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in hf.parameters())
    assert n_ours == n_hf, f"{n_ours} parameters, Hugging Face's tied model has {n_hf}"
    config = impl.decoder.DecoderConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_layers=1,
                                        num_heads=4, num_kv_heads=2, tie_word_embeddings=True)
    fresh = impl.decoder.Decoder(config)
    assert fresh.lm_head.weight.untyped_storage().data_ptr() == fresh.embed_tokens.weight.untyped_storage().data_ptr(), \
        "Decoder(config with tie_word_embeddings=True) must share one weight between embed_tokens and lm_head"


# ------------------------------------------------------------------ caches --

CHUNKINGS = {"token_by_token": [4] + [1] * 12, "uneven_chunks": [5, 1, 3, 1, 2, 4]}


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=list(CHUNKINGS))
@pytest.mark.parametrize("name", ["gqa_llama3_base", "mqa", "mistral_window_5"])
def test_prefill_and_decoding_equal_one_forward(impl, name, chunks):
    chunks = CHUNKINGS[chunks]
    total = sum(chunks)
    mask = left_padded([total, total - 3], total)
    ids = token_ids(2, total).masked_fill(mask == 0, 0)
    hf = hf_decoder(**CONFIGS[name])
    reference = hf_logits(hf, ids, mask)
    model = ours(impl, hf)
    caches = model.new_caches(2, total)
    out, start = [], 0
    with torch.no_grad():
        for n in chunks:
            out.append(model(ids[:, start:start + n], attention_mask=mask[:, :start + n], caches=caches))
            start += n
    got = torch.cat(out, dim=1)
    real = mask.bool()
    assert_close(got[real], reference[real], what=f"logits decoded in chunks {chunks} ({name})",
                 hint="new tokens continue at position caches[0].seq_len (not 0); keys are rotated BEFORE they go "
                      "into the cache, and cached keys are never rotated again; " + POSITION_HINT)


def test_caches_hold_kv_heads_and_a_window(impl):
    def stored_bytes(caches):
        seen = {}
        for cache in caches:
            for value in vars(cache).values():
                if isinstance(value, torch.Tensor):
                    seen[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
        return sum(seen.values())

    gqa = ours(impl, hf_decoder(**CONFIGS["gqa_llama3_base"]))  # 2 layers, Hkv = 2, D = 6, float64
    assert stored_bytes(gqa.new_caches(3, 40)) == 2 * 2 * 3 * 2 * 40 * 6 * 8, \
        "new_caches must preallocate K and V of num_kv_heads heads (not num_heads) per layer (L04's KVCache)"
    windowed = ours(impl, hf_decoder(**CONFIGS["mistral_window_5"]))
    assert stored_bytes(windowed.new_caches(3, 4000)) <= 2 * 2 * 3 * 2 * 5 * 6 * 8, \
        "with a sliding window W the caches are L07's RollingKVCache: W - 1 entries whatever max_seq_len is"


# --------------------------------------------------------------- generation --

@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
@pytest.mark.parametrize("name", ["gqa_llama3_base", "mistral_window_5"])
def test_greedy_generation_matches_hugging_face(impl, name, use_cache):
    mask = left_padded([9, 6, 3], 9)
    ids = token_ids(3, 9).masked_fill(mask == 0, 0)
    hf = hf_decoder(**CONFIGS[name])
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                           pad_token_id=0, eos_token_id=None)
    got = impl.decoder.generate(ours(impl, hf), ids, 10, attention_mask=mask, use_cache=use_cache)
    assert tuple(got.shape) == (3, 19), f"generate must return (B, L + max_new_tokens) = (3, 19), got {tuple(got.shape)}"
    wrong = (got != want).any(dim=1).nonzero().flatten().tolist()
    assert not wrong, (f"greedy tokens differ from hf.generate in rows {wrong}:\n  expected {want[:, 9:].tolist()}\n"
                       f"  got      {got[:, 9:].tolist()}\n  hint: {POSITION_HINT}")


def test_sampling_is_seeded_and_respects_top_k(impl):
    hf = hf_decoder(**CONFIGS["gqa_llama3_base"])
    model = ours(impl, hf)
    mask = left_padded([6, 4], 6)
    ids = token_ids(2, 6).masked_fill(mask == 0, 0)

    def sample(seed, **kw):
        return impl.decoder.generate(model, ids, 12, attention_mask=mask, generator=torch.Generator().manual_seed(seed),
                                     **kw)

    a, b = sample(0, temperature=1.0, top_k=5), sample(0, temperature=1.0, top_k=5)
    assert torch.equal(a, b), "two runs with generators seeded alike must sample the same tokens"
    assert not torch.equal(sample(0, temperature=2.0), sample(1, temperature=2.0)), \
        "different seeds gave the same 24 samples at temperature 2: is the generator used?"
    full_mask = torch.cat([mask, torch.ones(2, 12, dtype=torch.long)], dim=1)
    logits = hf_logits(hf, a, full_mask)[:, 5:-1]  # (B, 12, V): the logits each new token was drawn from
    top5 = logits.topk(5, dim=-1).indices
    inside = (top5 == a[:, 6:, None]).any(dim=-1)
    assert inside.all(), (f"sampled tokens outside the top 5 logits at (row, step) {(~inside).nonzero().tolist()}: "
                          "top_k keeps the k largest logits of each row and sets the rest to -inf")
    greedy = impl.decoder.generate(model, ids, 12, attention_mask=mask)
    assert torch.equal(sample(3, temperature=1.0, top_k=1), greedy), "top_k=1 must give the greedy tokens"
    assert torch.equal(sample(4, temperature=1e-3), greedy), \
        "temperature 1e-3 must give (almost surely) the greedy tokens: divide the logits by the temperature"
