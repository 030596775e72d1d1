"""L06 advanced suite: random head counts, lengths and chunkings (Hypothesis),
gradients against autograd through SDPA, float16/bfloat16, biases, caches
driven with causal=False, the conversion's independence from its source
(no aliasing, no mutation, L04's MultiHeadAttention accepted, biases pooled),
kv_cache_bytes against KVCache.nbytes, and bad input rejected with a named
error before the cache is touched.

Run: ./course test L06 --advanced
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from coursekit.reference import gqa_module_ref, gqa_ref
from coursekit.testing import assert_close, assert_no_nan, assert_rejects, decode_in_chunks, left_padding, randn

HIDDEN, HEADS = 36, 6
HEAD_DIM = HIDDEN // HEADS


def make_gqa(impl, num_kv_heads, hidden=HIDDEN, num_heads=HEADS, bias=False, seed=0, device="cpu",
             dtype=torch.float32):
    """The student's module with seeded unit-variance projections (as in test_basic.py)."""
    gqa = impl.gqa.GroupedQueryAttention(hidden, num_heads, num_kv_heads, bias=bias)
    with torch.no_grad():
        for i, name in enumerate("qkvo"):
            proj = getattr(gqa, f"{name}_proj")
            proj.weight.copy_(randn(*proj.weight.shape, seed=seed + i) / math.sqrt(proj.weight.shape[1]))
            if bias:
                proj.bias.copy_(0.5 * randn(*proj.bias.shape, seed=seed + 10 + i))
    return gqa.to(device=device, dtype=dtype)


# ------------------------------------------------------ random head counts --

@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(shape=st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2), (6, 3), (6, 2), (8, 4), (8, 1), (9, 3), (12, 4)]),
       head_dim=st.sampled_from([1, 3, 4, 5]), batch=st.integers(1, 3),
       chunks=st.lists(st.integers(1, 5), min_size=1, max_size=5), padded=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes_and_chunkings_match_the_reference(impl, shape, head_dim, batch, chunks, padded, seed):
    num_heads, num_kv_heads = shape
    hidden, total = num_heads * head_dim, sum(chunks)
    gqa = make_gqa(impl, num_kv_heads, hidden=hidden, num_heads=num_heads, seed=seed)
    x = randn(batch, total, hidden, seed=seed + 1)
    lengths = [total - (seed + 5 * b) % total for b in range(batch)] if padded else [total] * batch
    keep = left_padding(lengths, total) if padded else None
    expected = gqa_module_ref(gqa, x, causal=True, key_padding_mask=keep)
    where = f"H={num_heads}, Hkv={num_kv_heads}, D={head_dim}, B={batch}, chunks {chunks}, real lengths {lengths}"
    assert_close(gqa(x, key_padding_mask=keep), expected, what="forward without a cache", hint=where)
    cache = impl.kv_cache.KVCache(batch, num_kv_heads, total, head_dim)
    assert_close(decode_in_chunks(gqa, x, chunks, cache, key_padding_mask=keep, causal=True), expected,
                 what="chunked decoding through the cache", hint=where)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(kv_heads=st.integers(1, 5), n_rep=st.integers(1, 5), length=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_repeat_kv_random_shapes(impl, kv_heads, n_rep, length, seed):
    x = randn(2, kv_heads, length, 3, seed=seed)
    got = impl.gqa.repeat_kv(x, n_rep)
    assert torch.equal(got, torch.repeat_interleave(x, n_rep, dim=1)), (
        f"repeat_kv differs from repeat_interleave for Hkv={kv_heads}, n_rep={n_rep}, L={length}")


# --------------------------------------------------------------- gradients --

def sdpa_forward(params, x, num_heads, num_kv_heads, mask):
    """Differentiable float64 reference: F.linear + SDPA(enable_gqa=True) on the given weights."""
    B, L, _ = x.shape

    def split(t, heads):
        return t.view(B, L, heads, -1).transpose(1, 2)

    q = split(F.linear(x, params["q_proj.weight"], params.get("q_proj.bias")), num_heads)
    k = split(F.linear(x, params["k_proj.weight"], params.get("k_proj.bias")), num_kv_heads)
    v = split(F.linear(x, params["v_proj.weight"], params.get("v_proj.bias")), num_kv_heads)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True).nan_to_num(0.0)
    return F.linear(out.transpose(1, 2).reshape(B, L, -1), params["o_proj.weight"], params.get("o_proj.bias"))


@pytest.mark.parametrize("num_kv_heads", [2, 1, 6], ids=["gqa", "mqa", "mha"])
def test_gradients_match_autograd_through_sdpa(impl, num_kv_heads):
    gqa = make_gqa(impl, num_kv_heads, bias=True, seed=40, dtype=torch.float64)
    x = randn(2, 7, HIDDEN, seed=41, dtype=torch.float64, requires_grad=True)
    grad_out = randn(2, 7, HIDDEN, seed=42, dtype=torch.float64)
    keep = left_padding([7, 5], 7)
    names = [name for name, _ in gqa.named_parameters()]
    got = torch.autograd.grad(gqa(x, key_padding_mask=keep), [x, *gqa.parameters()], grad_out)

    params = {name: p.detach().clone().requires_grad_(True) for name, p in gqa.named_parameters()}
    x_ref = x.detach().clone().requires_grad_(True)
    mask = torch.ones(7, 7, dtype=torch.bool).tril() & keep[:, None, None, :]
    expected = torch.autograd.grad(sdpa_forward(params, x_ref, HEADS, num_kv_heads, mask),
                                   [x_ref, *params.values()], grad_out)
    for name, g, e in zip(["hidden_states", *names], got, expected):
        assert_close(g, e, what=f"gradient of {name} (Hkv={num_kv_heads})", hint=(
            "the gradient of a shared key/value head is the SUM over the query heads that use it; "
            "repeat_kv built from expand + reshape (or repeat_interleave) gets that from autograd for free"))


def test_gradcheck_through_the_cache(impl):
    gqa = make_gqa(impl, 2, hidden=8, num_heads=4, bias=True, seed=43, dtype=torch.float64)
    x = randn(2, 4, 8, seed=44, dtype=torch.float64, requires_grad=True)
    keep = left_padding([4, 3], 4)

    def fn(x):
        cache = impl.kv_cache.KVCache(2, 2, 6, 2, dtype=torch.float64)
        return gqa(x, key_padding_mask=keep, cache=cache)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5), "gradcheck failed"


def test_repeat_kv_gradient_sums_over_the_group(impl):
    x = randn(2, 3, 4, 5, seed=45, requires_grad=True)
    grad = randn(2, 12, 4, 5, seed=46)
    (got,) = torch.autograd.grad(impl.gqa.repeat_kv(x, 4), x, grad)
    expected = grad.view(2, 3, 4, 4, 5).sum(dim=2)  # head g collects the gradients of output heads 4g .. 4g + 3
    assert_close(got, expected, what="gradient of repeat_kv",
                 hint="input head g feeds output heads g*n_rep .. g*n_rep + n_rep - 1; its gradient is their sum")


# --------------------------------------------------------------- precision --

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_kv_heads", [2, 1], ids=["gqa", "mqa"])
def test_half_precision_forward_and_decoding(impl, device, dtype, num_kv_heads):
    gqa = make_gqa(impl, num_kv_heads, seed=47, device=device, dtype=dtype)
    x = randn(2, 9, HIDDEN, seed=48, dtype=dtype, device=device)
    expected = gqa_module_ref(gqa, x, causal=True)
    out = gqa(x)
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected the input dtype {dtype}"
    assert_close(out, expected, what=f"{dtype} forward", hint=(
        f"{dtype}: the projections run in {dtype}; attention computes scores and softmax in float32 (L01's rule)"))
    cache = impl.kv_cache.KVCache(2, num_kv_heads, 9, HEAD_DIM, dtype=dtype, device=device)
    assert_close(decode_in_chunks(gqa, x, [5, 1, 2, 1], cache, causal=True), expected, what=f"{dtype} decoding")


def test_float16_fully_padded_query_gives_zeros(impl):
    gqa = make_gqa(impl, 3, seed=49, dtype=torch.float16)
    x = randn(2, 5, HIDDEN, seed=50, dtype=torch.float16)
    keep = left_padding([5, 2], 5)
    out = gqa(x, key_padding_mask=keep)
    assert_no_nan(out, hint="a padding query sees no key: 0, never NaN")
    assert_close(out, gqa_module_ref(gqa, x, causal=True, key_padding_mask=keep))


# ------------------------------------------------------------ zero sizes --

def test_zero_sizes_give_empty_results(impl):
    # A zero-length dimension is valid and gives an empty, correctly shaped result.
    x = randn(2, 3, 0, 4, seed=90)
    got = impl.gqa.repeat_kv(x, 2)
    assert tuple(got.shape) == (2, 6, 0, 4), f"repeat_kv of an empty sequence: shape {tuple(got.shape)}, expected (2, 6, 0, 4)"
    gqa = make_gqa(impl, 2, seed=91)
    cache = impl.kv_cache.KVCache(2, 2, 6, HEAD_DIM)
    gqa(randn(2, 3, HIDDEN, seed=92), cache=cache)
    k_before, v_before = cached_contents(cache, 2)
    out = gqa(randn(2, 0, HIDDEN, seed=93), cache=cache, causal=False)
    assert tuple(out.shape) == (2, 0, HIDDEN), (
        f"no new tokens: output shape {tuple(out.shape)}, expected (B, 0, hidden) = (2, 0, {HIDDEN})")
    k_now, v_now = cached_contents(cache, 2)
    assert cache.seq_len == 3 and torch.equal(k_now, k_before) and torch.equal(v_now, v_before), (
        "a call with no new tokens must leave the cache as it was (an empty update is a no-op)")
    out = gqa(randn(0, 5, HIDDEN, seed=94))
    assert tuple(out.shape) == (0, 5, HIDDEN), f"an empty batch: output shape {tuple(out.shape)}, expected (0, 5, {HIDDEN})"


# ------------------------------------------------------- module variants --

@pytest.mark.parametrize("num_kv_heads", [3, 1], ids=["gqa", "mqa"])
def test_bias_true_forward_and_decoding(impl, device, num_kv_heads):
    gqa = make_gqa(impl, num_kv_heads, bias=True, seed=51, device=device)
    x = randn(3, 10, HIDDEN, seed=52, device=device)
    expected = gqa_module_ref(gqa, x, causal=True)
    assert_close(gqa(x), expected, what="bias=True without a cache",
                 hint="every projection adds its bias, k_proj's and v_proj's of num_kv_heads * head_dim")
    cache = impl.kv_cache.KVCache(3, num_kv_heads, 12, HEAD_DIM, device=device)
    assert_close(decode_in_chunks(gqa, x, [3, 4, 1, 1, 1], cache, causal=True), expected,
                 what="bias=True with the cache")


class ListCache:
    """The least a cache needs (update(k, v) and seq_len; no num_heads, batch_size,
    head_dim or dtype to check): the module must duck-type it."""

    def __init__(self):
        self.k = self.v = None
        self.seq_len = 0

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        self.seq_len += k.shape[2]
        return self.k, self.v


def test_any_object_with_update_and_seq_len_is_a_cache(impl):
    gqa = make_gqa(impl, 3, seed=75)
    x = randn(2, 8, HIDDEN, seed=76)
    cache = ListCache()
    assert_close(decode_in_chunks(gqa, x, [3, 1, 4], cache, causal=True), gqa_module_ref(gqa, x, causal=True), hint=(
        "the module only needs cache.update(k, v) and cache.seq_len; check num_heads, batch_size, head_dim and "
        "dtype only where the cache has them (getattr with a default)"))
    assert cache.seq_len == 8 and tuple(cache.k.shape) == (2, 3, 8, HEAD_DIM), (
        "the cache received the num_kv_heads heads of k, before repeat_kv")


def test_causal_false_with_cache_sees_every_key(impl, device):
    gqa = make_gqa(impl, 2, seed=53, device=device)
    x = randn(2, 9, HIDDEN, seed=54, device=device)
    cache = impl.kv_cache.KVCache(2, 2, 9, HEAD_DIM, device=device)
    gqa(x[:, :5], cache=cache)
    out = gqa(x[:, 5:9], cache=cache, causal=False)
    assert_close(out, gqa_module_ref(gqa, x, causal=False)[:, 5:9],
                 hint="causal=False: the new queries attend to every cached key AND every new one")


def test_long_decode_one_token_at_a_time(impl):
    gqa = make_gqa(impl, 2, seed=55)
    x = randn(1, 64, HIDDEN, seed=56)
    cache = impl.kv_cache.KVCache(1, 2, 64, HEAD_DIM)
    assert_close(decode_in_chunks(gqa, x, [1] * 64, cache, causal=True), gqa_module_ref(gqa, x, causal=True),
                 hint="64 single-token steps from an empty cache")


def test_non_contiguous_hidden_states(impl, device):
    gqa = make_gqa(impl, 3, seed=57, device=device)
    x = randn(7, 2, HIDDEN, seed=58, device=device).transpose(0, 1)  # (B, L, hidden) with odd strides
    cache = impl.kv_cache.KVCache(2, 3, 7, HEAD_DIM, device=device)
    assert_close(decode_in_chunks(gqa, x, [4, 3], cache, causal=True), gqa_module_ref(gqa, x, causal=True),
                 hint="the projections' outputs are contiguous; split heads with view/reshape after them")


def test_repeat_kv_keeps_dtype_device_and_handles_strides(impl, device):
    x = randn(3, 4, 2, 5, seed=59, device=device, dtype=torch.bfloat16).transpose(1, 2)  # (B, Hkv=2, L=4, D)
    got = impl.gqa.repeat_kv(x, 3)
    assert got.dtype == torch.bfloat16 and got.device.type == device, f"got {got.dtype} on {got.device}"
    assert torch.equal(got, torch.repeat_interleave(x, 3, dim=1)), "repeat_kv of a non-contiguous x"
    same = impl.gqa.repeat_kv(x, 1)
    assert torch.equal(same, x), "n_rep=1 must return x's values unchanged"


# -------------------------------------------------------------- mha_to_gqa --

def test_mha_to_gqa_copies_q_and_o_and_leaves_the_source_alone(impl):
    mha = make_gqa(impl, HEADS, bias=True, seed=60)
    before = {name: p.detach().clone() for name, p in mha.named_parameters()}
    x = randn(2, 6, HIDDEN, seed=61)
    out_before = mha(x).detach()
    gqa = impl.gqa.mha_to_gqa(mha, 2)
    for name in ("q_proj", "o_proj"):
        for kind in ("weight", "bias"):
            new, old = getattr(getattr(gqa, name), kind), getattr(getattr(mha, name), kind)
            assert torch.equal(new, old), f"{name}.{kind} must be copied unchanged"
            assert new.data_ptr() != old.data_ptr(), (
                f"{name}.{kind} shares memory with the source: copy the tensors (a new module), do not reuse them")
    for name, p in mha.named_parameters():
        assert torch.equal(p, before[name]), f"mha_to_gqa modified the source's {name}: it must only read it"
    with torch.no_grad():
        for p in gqa.parameters():
            p.add_(1.0)  # training the converted model must not touch the source
    for name, p in mha.named_parameters():
        assert torch.equal(p, before[name]), f"changing the converted module changed the source's {name}"
    assert_close(mha(x), out_before, what="the source module's output after the conversion")


def test_mha_to_gqa_pools_biases_and_keeps_dtype(impl):
    mha = make_gqa(impl, HEADS, bias=True, seed=62, dtype=torch.float64)
    gqa = impl.gqa.mha_to_gqa(mha, 3)
    assert gqa.q_proj.weight.dtype == torch.float64, f"converted module is {gqa.q_proj.weight.dtype}, source float64"
    for name in "kv":
        b = getattr(mha, f"{name}_proj").bias.detach()
        expected = torch.stack([b[h * HEAD_DIM:(h + 1) * HEAD_DIM] for h in range(HEADS)]).view(3, 2, HEAD_DIM).mean(1)
        assert_close(getattr(gqa, f"{name}_proj").bias, expected.reshape(-1), what=f"pooled {name}_proj.bias",
                     hint="biases are pooled like the weights: the mean over each group's heads")
    x = randn(2, 5, HIDDEN, seed=63, dtype=torch.float64)
    assert_close(gqa(x), gqa_module_ref(gqa, x), what="converted module with biases")


def test_mha_to_gqa_accepts_l04_multi_head_attention(impl):
    torch.manual_seed(64)
    mha = impl.kv_cache.MultiHeadAttention(HIDDEN, HEADS)
    x = randn(2, 6, HIDDEN, seed=65)
    exact = impl.gqa.mha_to_gqa(mha, HEADS)
    assert isinstance(exact, impl.gqa.GroupedQueryAttention), "the result is a GroupedQueryAttention"
    assert_close(exact(x), mha(x), what="L04 MultiHeadAttention converted with num_kv_heads = num_heads")
    pooled = impl.gqa.mha_to_gqa(mha, 2)
    k = mha.k_proj.weight.detach().double().view(2, 3, HEAD_DIM, HIDDEN).mean(1).reshape(-1, HIDDEN)
    v = mha.v_proj.weight.detach().double().view(2, 3, HEAD_DIM, HIDDEN).mean(1).reshape(-1, HIDDEN)
    expected = gqa_ref(x, mha.q_proj.weight, k, v, mha.o_proj.weight, HEADS, 2,
                       mask=torch.ones(6, 6, dtype=torch.bool).tril())
    assert_close(pooled(x), expected, what="L04 MultiHeadAttention pooled to 2 key/value heads")


def test_mha_to_gqa_pools_a_gqa_module_further(impl):
    # 6 -> 3 -> 1 key/value heads equals 6 -> 1: averages of equal-size groups average again.
    mha = make_gqa(impl, HEADS, seed=66)
    twice = impl.gqa.mha_to_gqa(impl.gqa.mha_to_gqa(mha, 3), 1)
    once = impl.gqa.mha_to_gqa(mha, 1)
    for name in "kv":
        assert_close(getattr(twice, f"{name}_proj").weight, getattr(once, f"{name}_proj").weight,
                     what=f"{name}_proj.weight after 6 -> 3 -> 1", hint="a GQA source is pooled over its own kv heads")


def test_mha_to_gqa_rejects_bad_arguments(impl):
    mha = make_gqa(impl, HEADS, seed=67)
    heads = ("num_kv_heads", "num_heads")  # either side of a count that does not divide the other
    assert_rejects(lambda: impl.gqa.mha_to_gqa(mha, 0), "num_kv_heads")
    assert_rejects(lambda: impl.gqa.mha_to_gqa(mha, 4), *heads)
    assert_rejects(lambda: impl.gqa.mha_to_gqa(mha, 2.0), "num_kv_heads")
    assert_rejects(lambda: impl.gqa.mha_to_gqa(torch.nn.Linear(4, 4), 1), "module")
    assert_rejects(lambda: impl.gqa.mha_to_gqa(impl.gqa.mha_to_gqa(mha, 2), 3), *heads)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mha_to_gqa_keeps_the_training_mode(impl, mode):
    mha = make_gqa(impl, HEADS, seed=69).train(mode == "train")
    gqa = impl.gqa.mha_to_gqa(mha, 2)
    assert gqa.training == mha.training, (
        f"the source is in {mode} mode, the converted module in {'train' if gqa.training else 'eval'} mode: "
        "mha_to_gqa keeps the source's training mode (a fresh nn.Module starts in train mode: call "
        ".train(module.training))")


# ----------------------------------------------------------- kv_cache_bytes --

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_kv_cache_bytes_equals_the_caches_of_a_model(impl, dtype):
    layers, batch, kv_heads, length, head_dim = 3, 2, 2, 11, 6
    caches = [impl.kv_cache.KVCache(batch, kv_heads, length, head_dim, dtype=dtype) for _ in range(layers)]
    got = impl.gqa.kv_cache_bytes(batch, length, layers, kv_heads, head_dim, dtype)
    assert got == sum(c.k_cache.nbytes + c.v_cache.nbytes for c in caches), (
        f"kv_cache_bytes = {got}, but {layers} KVCache buffers of (B, Hkv, L, D) {dtype} hold "
        f"{sum(c.k_cache.nbytes + c.v_cache.nbytes for c in caches)} bytes")
    got = impl.gqa.kv_cache_bytes(batch, 0, layers, kv_heads, head_dim, dtype)
    assert got == 0 and isinstance(got, int), (
        f"kv_cache_bytes(seq_len=0) = {got!r}: an empty cache holds 0 bytes (a zero size is valid, not an error)")


def test_kv_cache_bytes_rejects_bad_arguments(impl):
    # Negative sizes and non-ints are errors; zero sizes are left to the convention above (seq_len=0 -> 0).
    f = impl.gqa.kv_cache_bytes
    assert_rejects(lambda: f(-1, 10, 2, 2, 4, torch.float32), "batch_size")
    assert_rejects(lambda: f(1, -1, 2, 2, 4, torch.float32), "seq_len")
    assert_rejects(lambda: f(1, 10.0, 2, 2, 4, torch.float32), "seq_len")
    assert_rejects(lambda: f(1, 10, -2, 2, 4, torch.float32), "num_layers")
    assert_rejects(lambda: f(1, 10, 2, -1, 4, torch.float32), "num_kv_heads")
    assert_rejects(lambda: f(1, 10, 2, 2, 2.5, torch.float32), "head_dim")
    assert_rejects(lambda: f(1, 10, 2, 2, 4, "bfloat16"), "dtype")


# --------------------------------------------------------------- bad input --

def cached_contents(cache, num_kv_heads):
    """What the cache holds now, through L04's API: an empty update returns it all (a no-op)."""
    nothing = torch.zeros(cache.batch_size, num_kv_heads, 0, HEAD_DIM)
    k_all, v_all = cache.update(nothing, nothing)
    return k_all.clone(), v_all.clone()


def test_bad_forward_input_is_rejected_before_the_cache_is_touched(impl):
    gqa = make_gqa(impl, 2, seed=68)
    cache = impl.kv_cache.KVCache(2, 2, 6, HEAD_DIM)
    gqa(randn(2, 4, HIDDEN, seed=69), cache=cache)
    k_before, v_before = cached_contents(cache, 2)
    step = randn(2, 1, HIDDEN, seed=70)
    cases = {
        "mask_over_new_keys_only": (dict(key_padding_mask=torch.ones(2, 1, dtype=torch.bool)), ("key_padding_mask",)),
        "mask_not_bool": (dict(key_padding_mask=torch.ones(2, 5)), ("key_padding_mask",)),
        "mask_wrong_batch": (dict(key_padding_mask=torch.ones(3, 5, dtype=torch.bool)), ("key_padding_mask",)),
        # causal must be a Python bool: a string, an int, None or a tensor is a TypeError naming it
        "causal_string": (dict(causal="yes"), ("causal",)),
        "causal_int": (dict(causal=1), ("causal",)),
        "causal_none": (dict(causal=None), ("causal",)),
        "causal_tensor": (dict(causal=torch.tensor(True)), ("causal",)),
    }
    for case, (kwargs, names) in cases.items():
        assert_rejects(lambda: gqa(step, cache=cache, **kwargs), *names)
        assert cache.seq_len == 4, (
            f"case {case}: the call was rejected but the cache now holds {cache.seq_len} positions (4 before). "
            "Check every argument BEFORE cache.update")
        k_now, v_now = cached_contents(cache, 2)
        assert torch.equal(k_now, k_before) and torch.equal(v_now, v_before), (
            f"case {case}: the call was rejected but the cached keys or values changed: a rejected call leaves "
            "the cache exactly as it was. Check every argument BEFORE cache.update")
    assert_rejects(lambda: gqa(randn(2, HIDDEN)), "hidden_states")
    assert_rejects(lambda: gqa(randn(2, 3, HIDDEN + 1)), "hidden_states", "hidden_size")
    assert_rejects(lambda: gqa(randn(2, 3, HIDDEN, dtype=torch.float64)), "hidden_states", "dtype")
    assert_rejects(lambda: gqa(randn(2, 3, HIDDEN).long()), "hidden_states")
    assert_rejects(lambda: gqa(step, cache=impl.kv_cache.KVCache(3, 2, 6, HEAD_DIM)), "cache", "k")
    assert_rejects(lambda: gqa(step, cache=impl.kv_cache.KVCache(2, 2, 6, HEAD_DIM, dtype=torch.float64)),
                   "cache", "k", "dtype")
    wide = impl.kv_cache.KVCache(2, HEADS, 6, HEAD_DIM)
    assert_rejects(lambda: gqa(step, cache=wide), "cache", "num_kv_heads")
    assert wide.seq_len == 0, "a cache with the wrong number of heads must not be written to"


def test_bad_constructor_arguments_are_rejected(impl):
    gqa_cls = impl.gqa.GroupedQueryAttention
    assert_rejects(lambda: gqa_cls(36.0, 6, 2), "hidden_size")
    assert_rejects(lambda: gqa_cls(36, 6, 2.0), "num_kv_heads")
    assert_rejects(lambda: gqa_cls(36, 6, -2), "num_kv_heads")
    assert_rejects(lambda: gqa_cls(0, 6, 2), "hidden_size")
    for flag in ("yes", 1, None, torch.tensor(True)):  # flags are Python bools
        assert_rejects(lambda: gqa_cls(36, 6, 2, bias=flag), "bias")
    assert_rejects(lambda: impl.gqa.repeat_kv(randn(1, 2, 3, 4), 1.5), "n_rep")
    assert_rejects(lambda: impl.gqa.repeat_kv([[1.0]], 2), "x")
