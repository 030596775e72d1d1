"""L09 advanced suite: RoPE at large positions and in half precision, the
relative-position property over random shapes (Hypothesis), the interleaved
layout as a row permutation of W_q and W_k, gradients of the decoder against
Hugging Face's, a bfloat16 decoder, a window of 1 and windows longer than the
sequence, generation edge cases, and bad input (a rejected call leaves the
caches as they were).

Run: ./course test L09 --advanced
"""
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coursekit.reference import hf_decoder, rope_interleaved_to_half, rope_rotate_ref
from coursekit.testing import assert_close, assert_rejects, assert_within_eager_error, randn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GQA = dict(num_heads=6, num_kv_heads=2, rope_theta=500000.0)


def ours(impl, hf_model):
    return impl.decoder.Decoder.from_hf(hf_model).eval()


def token_ids(batch, length, vocab=61, seed=1):
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def small_config(impl, **kw):
    args = dict(vocab_size=40, hidden_size=24, intermediate_size=32, num_layers=2, num_heads=4, num_kv_heads=2)
    args.update(kw)
    return impl.decoder.DecoderConfig(**args)


# --------------------------------------------------------------------- RoPE --

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_tables_at_large_positions(impl, dtype):
    """Angles in float32, only the finished cos/sin in half: a float16 angle at
    position 30000 is off by up to 8 radians."""
    positions = torch.tensor([5, 3001, 30011, 65000])
    cos, sin = impl.rope.rope_cos_sin(positions, 16, dtype=dtype)
    assert cos.dtype == dtype, f"cos has dtype {cos.dtype}, expected {dtype}"
    i = torch.arange(8, dtype=torch.float64)
    angle = positions.double()[:, None] * 10000.0 ** (-2 * i / 16)
    angle = torch.cat([angle, angle], dim=-1)
    # float32 angle error (<= 2 * 6e-8 * 65000 ~ 8e-3) plus one rounding to the half dtype
    tol = 8e-3 + (2e-3 if dtype == torch.float16 else 1.6e-2)
    for name, got, want in (("cos", cos, angle.cos()), ("sin", sin, angle.sin())):
        assert_close(got, want, atol=tol, rtol=0, what=f"{name} in {dtype} at positions {positions.tolist()}",
                     hint="compute the angles p * theta in float32 (or float64) and cast cos/sin at the end")


@settings(max_examples=25, deadline=None, derandomize=True)
@given(half=st.integers(1, 12), length=st.integers(2, 16), start=st.integers(0, 5000),
       base=st.sampled_from([100.0, 10000.0, 1e6]))
def test_relative_property_over_random_shapes(impl, half, length, start, base):
    D = 2 * half
    q = randn(1, 1, 1, D, seed=half, dtype=torch.float64).expand(1, 1, length, D)
    k = randn(1, 1, 1, D, seed=half + 100, dtype=torch.float64).expand(1, 1, length, D)
    pos = torch.arange(length) + start
    cos, sin = impl.rope.rope_cos_sin(pos, D, base=base, dtype=torch.float64)
    qr, kr = impl.rope.apply_rope(q, cos, sin), impl.rope.apply_rope(k, cos, sin)
    assert_close(qr, rope_rotate_ref(q, pos, base), what=f"rotated q (D={D}, base={base}, start={start})")
    scores = qr[0, 0] @ kr[0, 0].T  # (L, L)
    distance = pos[:, None] - pos[None, :]
    q0, k0 = q[0, 0, :1], k[0, 0, :1]  # the unrotated vectors
    want = torch.stack([(rope_rotate_ref(q0, torch.tensor([int(d)]), base) * k0).sum() for d in distance.flatten()])
    assert_close(scores.flatten(), want, atol=1e-9, what="q.k against R(p - j)q . k",
                 hint="the score of positions (p, j) must equal that of (p - j, 0)")


def test_interleaved_layout_is_a_row_permutation(impl):
    """Meta's checkpoints pair dims (2i, 2i+1); permuting W_q's rows per head
    (0, 2, 4, ..., 1, 3, 5, ...) turns them into the rotate-half layout."""
    D, heads, hidden, L = 8, 2, 16, 7
    w = randn(heads * D, hidden, seed=11, dtype=torch.float64)
    x = randn(L, hidden, seed=12, dtype=torch.float64)
    pos = torch.arange(L) * 3
    q_meta = (x @ w.T).view(L, heads, D // 2, 2)  # interleaved pairs, as complex numbers
    angle = pos.double()[:, None] * 10000.0 ** (-torch.arange(D // 2, dtype=torch.float64) * 2 / D)
    z = torch.view_as_complex(q_meta.contiguous()) * torch.polar(torch.ones_like(angle), angle)[:, None, :]
    meta = (torch.view_as_real(z).reshape(L, heads, D).transpose(0, 1))  # (heads, L, D), interleaved order
    q_half = (x @ rope_interleaved_to_half(w, heads).T).view(L, heads, D).transpose(0, 1)[None]  # (1, heads, L, D)
    cos, sin = impl.rope.rope_cos_sin(pos, D, dtype=torch.float64)
    got = impl.rope.apply_rope(q_half, cos, sin)[0]  # rotate-half order
    back = torch.cat([meta[..., 0::2], meta[..., 1::2]], dim=-1)  # interleaved -> halves
    assert_close(got, back, what="rotate-half RoPE of permuted weights vs Meta's complex RoPE",
                 hint="rotate-half pairs dims (i, i + D/2); the interleaved layout pairs (2i, 2i + 1)")


# ------------------------------------------------------------------ RMSNorm --

def test_rms_norm_eps_zero_and_gradients(impl):
    x = randn(2, 3, 10, seed=13, dtype=torch.float64, requires_grad=True)
    norm = impl.rope.RMSNorm(10, eps=0).double()
    with torch.no_grad():
        norm.weight.copy_(1 + randn(10, seed=14, dtype=torch.float64))
    y = norm(x)
    w = norm.weight.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = w * x_ref / torch.sqrt((x_ref * x_ref).mean(-1, keepdim=True))
    assert_close(y, y_ref, what="RMSNorm(eps=0)")
    g = randn(*y.shape, seed=15, dtype=torch.float64)
    y.backward(g)
    y_ref.backward(g)
    assert_close(x.grad, x_ref.grad, what="dL/dx of RMSNorm")
    assert_close(norm.weight.grad, w.grad, what="dL/dweight of RMSNorm")


# ------------------------------------------------------------------ decoder --

def test_gradients_match_hugging_face(impl):
    """One training step's gradients: same loss, same gradient for every parameter."""
    hf = hf_decoder(**GQA)
    model = ours(impl, hf).train()
    ids = token_ids(2, 11)
    targets = token_ids(2, 11, seed=2)
    loss_hf = torch.nn.functional.cross_entropy(hf(ids).logits.flatten(0, 1), targets.flatten())
    loss_hf.backward()
    loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    loss.backward()
    assert_close(loss, loss_hf.detach(), what="loss")
    grads_hf = {k.removeprefix("model."): p.grad for k, p in hf.named_parameters()}
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert_close(p.grad, grads_hf[name], what=f"gradient of {name}")


def test_bfloat16_decoder_is_as_close_as_hugging_face(impl):
    reference = hf_decoder(**GQA)(token_ids(2, 13)).logits.detach()
    hf16 = hf_decoder(**GQA, dtype=torch.bfloat16)
    with torch.no_grad():
        eager = hf16(token_ids(2, 13)).logits
        got = ours(impl, hf16)(token_ids(2, 13))
    assert got.dtype == torch.bfloat16, f"a bfloat16 model gives bfloat16 logits, got {got.dtype}"
    assert_within_eager_error(got, reference, eager, what="bfloat16 logits",
                              hint="RMSNorm statistics and RoPE angles in float32, cast at the end")


@pytest.mark.gpu
def test_triton_attention_backend_on_cuda_is_as_close_as_hugging_face(impl):
    """The GPU benchmark's path: set_attention_backend("triton") sends every attention call
    through your L05 kernel (GQA inside it, bottom-right causal): a bfloat16 prefill and then
    single-token decode steps through the caches, on CUDA, must be as close to the float64
    reference as Hugging Face's own bfloat16 model is."""
    ids = token_ids(2, 40)
    wide = dict(GQA, hidden_size=96, intermediate_size=128)  # head_dim 16: the kernel's smallest
    with torch.no_grad():
        reference = hf_decoder(**wide)(ids).logits
        hf16 = hf_decoder(**wide, dtype=torch.bfloat16).cuda()
        eager = hf16(ids.cuda()).logits
        model = ours(impl, hf16).set_attention_backend("triton")
        caches = model.new_caches(2, 40)
        logits = [model(ids[:, :32].cuda(), caches=caches)]                         # prefill: 32 tokens
        logits += [model(ids[:, t:t + 1].cuda(), caches=caches) for t in range(32, 40)]  # decode: Lq = 1
    got = torch.cat(logits, dim=1)
    assert_within_eager_error(got, reference, eager, what="bfloat16 logits of the Triton path (prefill + decode)",
                              hint="a decode step is Lq = 1 against the cache: the kernel's causal mask must be "
                                   "bottom-right; GQA heads map h -> h // (H / Hkv)")


@pytest.mark.parametrize("window", [1, 2, 40])
def test_windows_of_one_two_and_longer_than_the_sequence(impl, window):
    hf = hf_decoder(num_heads=6, num_kv_heads=3, sliding_window=window)
    ids = token_ids(2, 9)
    reference = hf(ids).logits.detach()
    model = ours(impl, hf)
    caches = model.new_caches(2, 9)
    with torch.no_grad():
        full = model(ids)
        steps = torch.cat([model(ids[:, t:t + 1], caches=caches) for t in range(9)], dim=1)
    assert_close(full, reference, what=f"logits with sliding_window={window}")
    assert_close(steps, reference, what=f"logits decoded token by token with sliding_window={window}",
                 hint="W counts the query's own key: the rolling cache holds W - 1 past entries")


def test_right_padded_prefill_needs_its_own_mask(impl):
    """Right padding through the caches: real tokens first, the mask over all keys."""
    hf = hf_decoder(**GQA)
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    ids = token_ids(2, 8).masked_fill(mask == 0, 0)
    reference = hf(ids, attention_mask=mask).logits.detach()
    model = ours(impl, hf)
    caches = model.new_caches(2, 8)
    with torch.no_grad():
        got = torch.cat([model(ids[:, :6], attention_mask=mask[:, :6], caches=caches),
                         model(ids[:, 6:], attention_mask=mask, caches=caches)], dim=1)
    real = mask.bool()
    assert_close(got[real], reference[real], what="right-padded logits through the caches")


def test_generate_edge_cases(impl):
    hf = hf_decoder(**GQA)
    model = ours(impl, hf)
    ids = token_ids(2, 5)
    same = impl.decoder.generate(model, ids, 0)
    assert torch.equal(same, ids), "max_new_tokens=0 returns the prompt"
    with torch.no_grad():
        want = hf.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(impl.decoder.generate(model, ids, 6), want), "greedy without attention_mask differs from HF"
    one = impl.decoder.generate(model, ids[:1, :1], 6)
    with torch.no_grad():
        want_one = hf.generate(ids[:1, :1], max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(one, want_one), "a one-token prompt differs from HF"


def test_from_hf_keeps_dtype_and_config(impl):
    hf = hf_decoder(**GQA, dtype=torch.float32)
    model = ours(impl, hf)
    assert model.embed_tokens.weight.dtype == torch.float32
    c = model.config
    assert (c.num_heads, c.num_kv_heads, c.rope_base, c.num_layers) == (6, 2, 500000.0, 2), \
        f"config read from hf_model.config is wrong: {c}"


# ---------------------------------------------------------------- bad input --

def test_rope_rejects_bad_input(impl):
    rope = impl.rope
    assert_rejects(lambda: rope.rope_cos_sin(torch.arange(4.0), 8), "positions")
    assert_rejects(lambda: rope.rope_cos_sin(torch.arange(4), 7), "head_dim")
    assert_rejects(lambda: rope.rope_cos_sin(torch.arange(4), 8, base=0.0), "base")
    x = randn(1, 2, 4, 8)
    cos, sin = rope.rope_cos_sin(torch.arange(4), 6)
    assert_rejects(lambda: rope.apply_rope(x, cos, sin), "cos", "x", "head_dim")
    cos, sin = rope.rope_cos_sin(torch.arange(5), 8)
    assert_rejects(lambda: rope.apply_rope(x, cos, sin), "cos", "x", "broadcast")
    assert_rejects(lambda: rope.rotate_half(randn(3, 5)), "x")
    assert_rejects(lambda: rope.RMSNorm(8)(randn(2, 6)), "x", "dim")
    assert_rejects(lambda: rope.RMSNorm(0), "dim")
    assert_rejects(lambda: rope.RMSNorm(8, eps=-1.0), "eps")


def test_config_rejects_bad_fields(impl):
    for field, value in (("num_heads", 5), ("num_kv_heads", 3), ("vocab_size", 0), ("sliding_window", 0),
                         ("rope_base", -1.0)):
        names = (field, "hidden_size") if field == "num_heads" else (field, "num_heads") if field == "num_kv_heads" \
            else (field,)
        assert_rejects(lambda: small_config(impl, **{field: value}), *names)
    assert_rejects(lambda: small_config(impl, hidden_size=12, num_heads=4), "head_dim", "even")  # head_dim 3


def test_forward_rejects_bad_input_and_leaves_caches_alone(impl):
    model = impl.decoder.Decoder(small_config(impl))
    ids = torch.randint(0, 40, (2, 5))
    assert_rejects(lambda: model(ids.float()), "input_ids")
    assert_rejects(lambda: model(ids + 40), "input_ids", "vocab_size")
    assert_rejects(lambda: model(ids, attention_mask=torch.ones(2, 4, dtype=torch.long)), "attention_mask",
                   "key_padding_mask")
    caches = model.new_caches(2, 8)
    with torch.no_grad():
        model(ids, caches=caches)
    before = [c.seq_len for c in caches]
    assert_rejects(lambda: model(ids, caches=caches), "caches", "cache")  # 5 + 5 > 8 positions
    assert_rejects(lambda: model(ids[:, :1], attention_mask=torch.ones(2, 1, dtype=torch.long), caches=caches),
                   "attention_mask", "key_padding_mask")  # must cover the 5 cached tokens too
    assert_rejects(lambda: model(ids[:, :1], caches=caches[:1]), "caches")
    assert [c.seq_len for c in caches] == before, f"a rejected call changed the caches' seq_len: {before} -> " \
                                                  f"{[c.seq_len for c in caches]}"


def test_generate_rejects_bad_arguments(impl):
    model = impl.decoder.Decoder(small_config(impl))
    ids = torch.randint(0, 40, (2, 5))
    assert_rejects(lambda: impl.decoder.generate(model, ids, -1), "max_new_tokens")
    assert_rejects(lambda: impl.decoder.generate(model, ids, 2, temperature=-1.0), "temperature")
    assert_rejects(lambda: impl.decoder.generate(model, ids, 2, temperature=1.0, top_k=0), "top_k")
    assert_rejects(lambda: impl.decoder.generate(model, ids, 2, use_cache="yes"), "use_cache")
    assert_rejects(lambda: impl.decoder.generate(model, ids, 2, temperature=1.0, generator=0), "generator")
    assert_rejects(lambda: impl.decoder.generate(model, ids, 2, attention_mask=torch.ones(2, 4, dtype=torch.long)),
                   "attention_mask")


def test_from_hf_rejects_what_it_cannot_run(impl):
    assert_rejects(lambda: impl.decoder.Decoder.from_hf(torch.nn.Linear(2, 2)), "hf_model")
    hf = hf_decoder(**GQA)
    hf.config.attention_bias = True
    assert_rejects(lambda: impl.decoder.Decoder.from_hf(hf), "hf_model", "attention_bias")
