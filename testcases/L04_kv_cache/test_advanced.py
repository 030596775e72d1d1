"""L04 advanced suite: gradients, half precision, biases, random chunkings,
causal=False with a cache, long decodes, and bad input that must be rejected
with a named error before the cache is touched.

Run: ./course test L04 --advanced
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coursekit.reference import mha_module_ref
from coursekit.testing import assert_close, assert_no_nan, assert_rejects, decode_in_chunks, left_padding, randn

D_MODEL, HEADS, HEAD_DIM = 24, 3, 8


def make_mha(impl, d_model=D_MODEL, num_heads=HEADS, bias=False, seed=0, device="cpu", dtype=torch.float32):
    """The student's module with seeded unit-variance projections (as in test_basic.py)."""
    mha = impl.kv_cache.MultiHeadAttention(d_model, num_heads, bias=bias)
    with torch.no_grad():
        for i, name in enumerate("qkvo"):
            proj = getattr(mha, f"{name}_proj")
            proj.weight.copy_(randn(d_model, d_model, seed=seed + i) / math.sqrt(d_model))
            if bias:
                proj.bias.copy_(0.5 * randn(d_model, seed=seed + 10 + i))
    return mha.to(device=device, dtype=dtype)


# --------------------------------------------------------------- gradients --

@pytest.mark.parametrize("with_cache", [False, True], ids=["no_cache", "prefill_through_cache"])
def test_gradcheck_float64(impl, with_cache):
    mha = make_mha(impl, d_model=6, num_heads=2, bias=True, seed=70, dtype=torch.float64)
    x = randn(2, 4, 6, seed=71, dtype=torch.float64, requires_grad=True)
    keep = left_padding([4, 3], 4)

    def fn(x):
        cache = impl.kv_cache.KVCache(2, 2, 6, 3, dtype=torch.float64) if with_cache else None
        return mha(x, key_padding_mask=keep, cache=cache)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5), "gradcheck failed"


def test_weight_gradients_do_not_depend_on_the_cache(impl):
    # One prefill through a fresh cache is ordinary attention: its gradients
    # w.r.t. every projection equal those of the uncached call.
    mha = make_mha(impl, seed=72, bias=True, dtype=torch.float64)
    x = randn(2, 6, D_MODEL, seed=73, dtype=torch.float64)
    grad = randn(2, 6, D_MODEL, seed=74, dtype=torch.float64)
    params = list(mha.parameters())
    plain = torch.autograd.grad(mha(x), params, grad)
    cache = impl.kv_cache.KVCache(2, HEADS, 9, HEAD_DIM, dtype=torch.float64)
    cached = torch.autograd.grad(mha(x, cache=cache), params, grad)
    for (name, _), want, got in zip(mha.named_parameters(), plain, cached):
        assert_close(got, want, what=f"grad of {name} through the cache",
                     hint="update must copy k and v into the buffer with an in-place slice assignment, which "
                          "autograd tracks; do not detach them")


# --------------------------------------------------------------- precision --

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_decoding(impl, device, dtype):
    mha = make_mha(impl, seed=75, device=device, dtype=dtype)
    x = randn(2, 9, D_MODEL, seed=76, dtype=dtype, device=device)
    cache = impl.kv_cache.KVCache(2, HEADS, 9, HEAD_DIM, dtype=dtype, device=device)
    out = decode_in_chunks(mha, x, [5, 1, 1, 1, 1], cache)
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected the input dtype {dtype}"
    k_all, _ = cache.update(*(torch.zeros(2, HEADS, 0, HEAD_DIM, dtype=dtype, device=device),) * 2)
    assert k_all.dtype == dtype, f"a {dtype} cache should store {dtype}, got {k_all.dtype}"
    assert_close(out, mha_module_ref(mha, x, causal=True), hint=(
        f"{dtype}: the projections run in {dtype}; attention computes its scores and softmax in float32 "
        "(L01's rule) and returns the input dtype"))


def test_float16_fully_padded_query_gives_zeros(impl):
    mha = make_mha(impl, seed=77, dtype=torch.float16)
    x = randn(2, 5, D_MODEL, seed=78, dtype=torch.float16)
    keep = left_padding([5, 2], 5)
    out = mha(x, key_padding_mask=keep)
    assert_no_nan(out, hint="a padding query sees no key: 0, never NaN (guard the empty softmax row)")
    assert_close(out, mha_module_ref(mha, x, causal=True, key_padding_mask=keep))


# ------------------------------------------------------------------- bias --

def test_bias_true_decoding_matches_reference(impl, device):
    mha = make_mha(impl, seed=79, bias=True, device=device)
    x = randn(3, 10, D_MODEL, seed=80, device=device)
    expected = mha_module_ref(mha, x, causal=True)
    assert_close(mha(x), expected, what="bias=True without a cache",
                 hint="every projection adds its bias; nn.Linear(d_model, d_model, bias=bias)")
    cache = impl.kv_cache.KVCache(3, HEADS, 12, HEAD_DIM, device=device)
    assert_close(decode_in_chunks(mha, x, [3, 4, 1, 1, 1], cache), expected, what="bias=True with the cache")


# ------------------------------------------------------- decoding variants --

def test_causal_false_with_cache_sees_every_key(impl, device):
    mha = make_mha(impl, seed=81, device=device)
    x = randn(2, 9, D_MODEL, seed=82, device=device)
    cache = impl.kv_cache.KVCache(2, HEADS, 9, HEAD_DIM, device=device)
    mha(x[:, :5], cache=cache)
    out = mha(x[:, 5:9], cache=cache, causal=False)  # 4 queries, 9 keys, no mask at all
    expected = mha_module_ref(mha, x, causal=False)[:, 5:9]
    assert_close(out, expected, hint="causal=False: the new queries attend to every cached key AND every new one")


def test_long_decode_one_token_at_a_time(impl):
    mha = make_mha(impl, seed=83)
    x = randn(1, 80, D_MODEL, seed=84)
    cache = impl.kv_cache.KVCache(1, HEADS, 80, HEAD_DIM)
    out = decode_in_chunks(mha, x, [1] * 80, cache)
    assert_close(out, mha_module_ref(mha, x, causal=True), hint="80 single-token steps from an empty cache")


def test_update_copies_its_inputs(impl):
    cache = impl.kv_cache.KVCache(1, 2, 6, 4)
    k, v = randn(1, 2, 3, 4, seed=85), randn(1, 2, 3, 4, seed=86)
    k_all, v_all = cache.update(k, v)
    expected_k, expected_v = k.clone(), v.clone()
    k.add_(100.0)
    v.add_(100.0)
    assert_close(k_all, expected_k, what="k_all after the caller modified its k",
                 hint="the cache must own a copy: write into the buffer, do not keep a reference to the input")
    assert_close(v_all, expected_v, what="v_all after the caller modified its v")


def test_non_contiguous_input(impl, device):
    mha = make_mha(impl, seed=87, device=device)
    x = randn(7, 2, D_MODEL, seed=88, device=device).transpose(0, 1)  # (B, L, d_model) view with odd strides
    cache = impl.kv_cache.KVCache(2, HEADS, 7, HEAD_DIM, device=device)
    assert_close(decode_in_chunks(mha, x, [4, 3], cache), mha_module_ref(mha, x, causal=True),
                 hint="use reshape (or view after a contiguous projection) that respects strides")


def test_one_cache_serves_two_sequences_after_reset(impl):
    mha = make_mha(impl, seed=89)
    cache = impl.kv_cache.KVCache(2, HEADS, 8, HEAD_DIM)
    for seed, chunks in ((90, [5, 1, 1, 1]), (91, [2, 1, 3])):
        x = randn(2, sum(chunks), D_MODEL, seed=seed)
        cache.reset()
        assert_close(decode_in_chunks(mha, x, chunks, cache), mha_module_ref(mha, x, causal=True),
                     hint="after reset() nothing of the previous sequence may be visible")


def test_generate_zero_new_tokens_returns_the_prompt(impl):
    torch.manual_seed(92)
    model = impl.kv_cache.TinyDecoder(vocab_size=30, d_model=16, num_heads=2, num_layers=1, max_positions=16)
    prompt = torch.randint(0, 30, (2, 4), generator=torch.Generator().manual_seed(92))
    for use_cache in (True, False):
        out = impl.kv_cache.greedy_generate(model, prompt, 0, use_cache=use_cache)
        assert torch.equal(out, prompt), f"max_new_tokens=0 (use_cache={use_cache}) should return the prompt"


# -------------------------------------------------------------- zero sizes --

def test_empty_update_is_a_no_op_that_returns_the_contents(impl):
    cache = impl.kv_cache.KVCache(2, 3, 6, 4)
    k_all, v_all = cache.update(randn(2, 3, 0, 4), randn(2, 3, 0, 4))
    assert cache.seq_len == 0 and tuple(k_all.shape) == (2, 3, 0, 4) and tuple(v_all.shape) == (2, 3, 0, 4), (
        f"an empty update of an empty cache should return (2, 3, 0, 4) views and keep seq_len 0, got "
        f"{tuple(k_all.shape)}, {tuple(v_all.shape)} and seq_len {cache.seq_len}")
    k, v = randn(2, 3, 3, 4, seed=103), randn(2, 3, 3, 4, seed=104)
    cache.update(k, v)
    k_all, v_all = cache.update(randn(2, 3, 0, 4), randn(2, 3, 0, 4))
    assert cache.seq_len == 3, f"an update of 0 positions changed seq_len from 3 to {cache.seq_len}"
    assert_close(k_all, k, what="k_all after an empty update", hint="an empty update returns what the cache holds")
    assert_close(v_all, v, what="v_all after an empty update")


def test_zero_new_tokens_through_the_module(impl):
    mha = make_mha(impl, seed=105)
    x = randn(2, 4, D_MODEL, seed=106)
    cache = impl.kv_cache.KVCache(2, HEADS, 6, HEAD_DIM)
    mha(x, cache=cache)
    out = mha(x[:, :0], cache=cache, key_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    assert tuple(out.shape) == (2, 0, D_MODEL), f"0 new tokens gave output shape {tuple(out.shape)}, expected (2, 0, {D_MODEL})"
    assert cache.seq_len == 4, f"0 new tokens changed the cache's seq_len from 4 to {cache.seq_len}"
    assert tuple(mha(x[:, :0]).shape) == (2, 0, D_MODEL), "an empty sequence without a cache gives (B, 0, d_model)"
    positions = impl.kv_cache.token_positions(4, 0)
    assert tuple(positions.shape) == (1, 0), f"token_positions(4, 0) has shape {tuple(positions.shape)}, expected (1, 0)"


# -------------------------------------------------------- random chunkings --

@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(chunks=st.lists(st.integers(1, 6), min_size=1, max_size=7), batch=st.integers(1, 3),
       heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([1, 3, 8]), padded=st.booleans(),
       extra_room=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_random_chunkings_equal_the_full_forward(impl, chunks, batch, heads, head_dim, padded, extra_room, seed):
    total, d_model = sum(chunks), heads * head_dim
    mha = make_mha(impl, d_model=d_model, num_heads=heads, seed=seed)
    x = randn(batch, total, d_model, seed=seed + 1)
    lengths = [total - (seed + 7 * b) % total for b in range(batch)] if padded else [total] * batch
    keep = left_padding(lengths, total) if padded else None
    cache = impl.kv_cache.KVCache(batch, heads, total + extra_room, head_dim)
    out = decode_in_chunks(mha, x, chunks, cache, key_padding_mask=keep)
    assert cache.seq_len == total, f"after chunks {chunks} the cache should hold {total}, got {cache.seq_len}"
    assert_close(out, mha_module_ref(mha, x, causal=True, key_padding_mask=keep),
                 hint=f"chunks {chunks}, B={batch}, H={heads}, D={head_dim}, real lengths {lengths}")


# --------------------------------------------------------------- bad input --

@pytest.mark.parametrize("name,position", [("batch_size", 0), ("num_heads", 1), ("max_seq_len", 2), ("head_dim", 3)])
def test_bad_cache_arguments_are_rejected(impl, name, position):
    for bad in (0, -2, 2.5, True):
        args = [2, 3, 8, 4]
        args[position] = bad
        assert_rejects(lambda: impl.kv_cache.KVCache(*args), name)
    assert_rejects(lambda: impl.kv_cache.KVCache(2, 3, 8, 4, dtype=torch.int64), "dtype")


def test_mismatched_updates_are_rejected_and_change_nothing(impl):
    cache = impl.kv_cache.KVCache(2, 3, 8, 4)
    k, v = randn(2, 3, 2, 4, seed=93), randn(2, 3, 2, 4, seed=94)
    cache.update(k, v)
    bad = {
        "batch": (randn(3, 3, 1, 4), randn(3, 3, 1, 4), ("k", "batch")),
        "heads": (randn(2, 4, 1, 4), randn(2, 4, 1, 4), ("k", "heads")),
        "head_dim": (randn(2, 3, 1, 5), randn(2, 3, 1, 5), ("k", "head_dim")),
        "k_v_shapes": (randn(2, 3, 1, 4), randn(2, 3, 2, 4), ("v", "k")),
        "rank": (randn(2, 1, 4), randn(2, 1, 4), ("k",)),
        "dtype": (randn(2, 3, 1, 4, dtype=torch.float64), randn(2, 3, 1, 4, dtype=torch.float64), ("k", "dtype")),
        "not_a_tensor": ([[0.0]], randn(2, 3, 1, 4), ("k",)),
        "overflow": (randn(2, 3, 7, 4), randn(2, 3, 7, 4), ("max_seq_len", "cache", "k", "8")),
    }
    for case, (k_bad, v_bad, names) in bad.items():
        assert_rejects(lambda: cache.update(k_bad, v_bad), *names)
        assert cache.seq_len == 2, f"case {case}: a rejected update changed seq_len to {cache.seq_len}"
    k_all, _ = cache.update(randn(2, 3, 1, 4, seed=95), randn(2, 3, 1, 4, seed=96))
    assert_close(k_all[:, :, :2], k, what="the cached keys after the rejected updates",
                 hint="check everything before writing anything")


def test_bad_module_arguments_are_rejected(impl):
    mha_cls = impl.kv_cache.MultiHeadAttention
    assert_rejects(lambda: mha_cls(24, 5), "num_heads", "d_model")
    assert_rejects(lambda: mha_cls(0, 1), "d_model")
    assert_rejects(lambda: mha_cls(24, 0), "num_heads")
    assert_rejects(lambda: mha_cls(24.0, 3), "d_model")


def test_bad_forward_input_is_rejected_before_the_cache_is_touched(impl):
    mha = make_mha(impl, seed=97)
    cache = impl.kv_cache.KVCache(2, HEADS, 6, HEAD_DIM)
    x = randn(2, 4, D_MODEL, seed=98)
    mha(x, cache=cache)
    step = randn(2, 1, D_MODEL, seed=99)
    cases = {
        "mask_over_new_keys_only": (dict(key_padding_mask=torch.ones(2, 1, dtype=torch.bool)), ("key_padding_mask",)),
        "mask_not_bool": (dict(key_padding_mask=torch.ones(2, 5)), ("key_padding_mask",)),
        "mask_wrong_batch": (dict(key_padding_mask=torch.ones(3, 5, dtype=torch.bool)), ("key_padding_mask",)),
        "causal_is_a_string": (dict(causal="yes"), ("causal",)),
        "causal_is_an_int": (dict(causal=1), ("causal",)),
        "causal_is_none": (dict(causal=None), ("causal",)),
        "causal_is_a_tensor": (dict(causal=torch.tensor(True)), ("causal",)),
    }
    for case, (kwargs, names) in cases.items():
        assert_rejects(lambda: mha(step, cache=cache, **kwargs), *names)
        assert cache.seq_len == 4, (
            f"case {case}: the call was rejected but the cache now holds {cache.seq_len} positions (4 before). "
            "Check every argument BEFORE cache.update: a failed call must not leave half a step in the cache")
    assert_rejects(lambda: mha(randn(2, D_MODEL)), "x")
    assert_rejects(lambda: mha(randn(2, 3, D_MODEL + 1)), "x", "d_model")
    assert_rejects(lambda: mha(randn(2, 3, D_MODEL, dtype=torch.float64)), "x", "dtype")
    assert_rejects(lambda: mha(randn(2, 3, D_MODEL).long()), "x")
    other = impl.kv_cache.KVCache(3, HEADS, 6, HEAD_DIM)
    assert_rejects(lambda: mha(step, cache=other), "cache", "x", "k")
    wrong_dtype = impl.kv_cache.KVCache(2, HEADS, 6, HEAD_DIM, dtype=torch.float64)
    assert_rejects(lambda: mha(step, cache=wrong_dtype), "cache", "x", "k", "dtype")


def test_decoding_past_the_cache_raises_a_named_error(impl):
    mha = make_mha(impl, seed=100)
    cache = impl.kv_cache.KVCache(1, HEADS, 5, HEAD_DIM)
    x = randn(1, 7, D_MODEL, seed=101)
    decode_in_chunks(mha, x[:, :5], [4, 1], cache)
    assert_rejects(lambda: mha(x[:, 5:7], cache=cache), "max_seq_len", "cache", "x", "k", "5")
    assert cache.seq_len == 5, f"a decoding step that overflows must leave the cache full at 5, got {cache.seq_len}"


def test_bad_positions_and_generation_arguments_are_rejected(impl):
    positions = impl.kv_cache.token_positions
    assert_rejects(lambda: positions(-1, 2), "past_len")
    assert_rejects(lambda: positions(0, -1), "new_len")
    assert_rejects(lambda: positions(1.5, 2), "past_len")
    assert_rejects(lambda: positions(3, 2, torch.ones(2, 4, dtype=torch.bool)), "key_padding_mask", "past_len", "new_len")
    torch.manual_seed(102)
    model = impl.kv_cache.TinyDecoder(vocab_size=20, d_model=8, num_heads=2, num_layers=1, max_positions=16)
    prompt = torch.zeros(1, 3, dtype=torch.long)
    assert_rejects(lambda: impl.kv_cache.greedy_generate(model, prompt, -1), "max_new_tokens")
    assert_rejects(lambda: impl.kv_cache.greedy_generate(model, prompt.float(), 2), "prompt_ids")
    for bad in ("yes", 1, None):
        assert_rejects(lambda bad=bad: impl.kv_cache.greedy_generate(model, prompt, 2, use_cache=bad), "use_cache")
    assert_rejects(lambda: impl.kv_cache.greedy_generate(model, prompt, 2, prompt_mask=torch.ones(1, 2).bool()),
                   "prompt_mask", "prompt_ids")
