"""L07 advanced suite: random shapes, windows and block sizes (Hypothesis),
half precision, gradients, reset(), random chunkings through the rolling
cache, devices, and constructor arguments that must be rejected.

Run: ./course test L07 --advanced
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coursekit.reference import sliding_window_attention_ref, sliding_window_mask_ref
from coursekit.testing import assert_close, assert_no_nan, assert_rejects, assert_same_mask, make_qkv, randn

HALF = [torch.float16, torch.bfloat16]


def masked_attention_autograd(q, k, v, window, scale=None):
    """Differentiable float64 reference: full masked softmax attention from
    torch primitives (every query here sees at least one key)."""
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    keep = sliding_window_mask_ref(q.shape[-2], k.shape[-2], window, device=q.device)
    scores = (q @ k.transpose(-2, -1) * scale).masked_fill(~keep, -math.inf)  # (B, H, Lq, Lk)
    return torch.softmax(scores, dim=-1) @ v


def decode(impl, q, k, v, window, chunks, cache, block_size=64):
    """Feed the sequence through `cache` chunk by chunk; each chunk's queries attend to what update returned."""
    outs, start = [], 0
    for n in chunks:
        k_vis, v_vis = cache.update(k[:, :, start:start + n], v[:, :, start:start + n])
        outs.append(impl.sliding_window.sliding_window_attention(q[:, :, start:start + n], k_vis, v_vis, window,
                                                                 block_size=block_size))
        start += n
    return torch.cat(outs, dim=2)


# ------------------------------------------------------------- Hypothesis --

@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(q_len=st.integers(1, 70), k_len=st.integers(1, 70), window=st.integers(1, 80),
       block=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_random_shapes_windows_and_blocks(impl, q_len, k_len, window, block, seed):
    q, k, v = make_qkv(1, 2, q_len, k_len, head_dim=3, v_dim=2, seed=seed)
    mask = impl.sliding_window.sliding_window_mask(q_len, k_len, window)
    assert_same_mask(mask, sliding_window_mask_ref(q_len, k_len, window),
                     what=f"sliding_window_mask({q_len}, {k_len}, {window})")
    out = impl.sliding_window.sliding_window_attention(q, k, v, window, block_size=block)
    assert_close(out, sliding_window_attention_ref(q, k, v, window),
                 hint=f"Lq={q_len}, Lk={k_len}, W={window}, block_size={block}")


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(block=st.integers(1, 33), window=st.integers(1, 30), length=st.integers(1, 60), seed=st.integers(0, 2**16))
def test_the_block_size_does_not_change_the_result(impl, block, window, length, seed):
    # Blocks are an implementation detail: any two block sizes agree to rounding.
    q, k, v = make_qkv(1, 1, length, head_dim=4, seed=seed, dtype=torch.float64)
    one = impl.sliding_window.sliding_window_attention(q, k, v, window, block_size=block)
    other = impl.sliding_window.sliding_window_attention(q, k, v, window, block_size=length + 7)
    assert_close(one, other, what=f"block_size={block} vs one block of {length + 7}",
                 hint="the band of a query block must hold every key any of its queries sees")


# -------------------------------------------------------------- precision --

@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
def test_half_precision_attention(impl, device, dtype):
    q, k, v = make_qkv(2, 3, 50, 50, head_dim=16, seed=50, dtype=dtype, device=device)
    out = impl.sliding_window.sliding_window_attention(q, k, v, 11, block_size=16)
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected the input dtype {dtype}"
    assert_close(out, sliding_window_attention_ref(q, k, v, 11),
                 hint=f"{dtype}: compute the scores, softmax and sums in float32, then return {dtype}")


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
def test_half_precision_large_logits(impl, dtype):
    # Scores with a spread of about 60: in float16 (bfloat16) they are rounded
    # to 1/32 (1/4), which moves the softmax weights by several percent; in
    # float32 they are exact enough. The reference uses the same half inputs.
    q, k, v = make_qkv(1, 2, 40, head_dim=8, seed=51, dtype=torch.float32)
    q, k, v = (q * 8).to(dtype), (k * 8).to(dtype), v.to(dtype)
    out = impl.sliding_window.sliding_window_attention(q, k, v, 7, block_size=8)
    assert_no_nan(out, hint=f"{dtype}: upcast q, k, v to float32 before q @ k^T")
    assert_close(out, sliding_window_attention_ref(q, k, v, 7), hint=(
        f"large logits: compute q @ k^T, the softmax and the sums in float32, not in {dtype}; round once at the end"))


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
def test_half_precision_decoding(impl, device, dtype):
    q, k, v = make_qkv(1, 2, 30, head_dim=8, seed=52, dtype=dtype, device=device)
    cache = impl.sliding_window.RollingKVCache(1, 2, 7, 8, dtype=dtype, device=device)
    out = decode(impl, q, k, v, 7, [5, 1, 1, 9, 1, 1, 12], cache)
    k_vis, _ = cache.update(k[:, :, :1], v[:, :, :1])
    assert k_vis.dtype == dtype, f"a {dtype} cache should store and return {dtype}, got {k_vis.dtype}"
    assert_close(out, sliding_window_attention_ref(q, k, v, 7))


# -------------------------------------------------------------- gradients --

@pytest.mark.parametrize("q_len,k_len,window,block", [(21, 21, 5, 4), (6, 17, 4, 3), (13, 13, 13, 5)],
                         ids=["square", "queries_after_a_cache", "window_is_length"])
def test_gradients_match_masked_full_attention(impl, device, q_len, k_len, window, block):
    q, k, v = make_qkv(2, 2, q_len, k_len, head_dim=6, v_dim=4, seed=53, dtype=torch.float64,
                       device=device, requires_grad=True)
    grad_out = randn(2, 2, q_len, 4, seed=54, dtype=torch.float64, device=device)
    got = torch.autograd.grad(impl.sliding_window.sliding_window_attention(q, k, v, window, block_size=block),
                              (q, k, v), grad_out)
    want = torch.autograd.grad(masked_attention_autograd(q, k, v, window), (q, k, v), grad_out)
    for name, g, w in zip("qkv", got, want):
        assert_close(g, w, what=f"d{name}", hint=(
            "build the result from differentiable torch ops (slicing, @, exp, sum, torch.cat); in-place writes "
            "into a preallocated output are recorded too, but .data, .detach() or .item() cut the graph"))


def test_gradcheck_float64(impl):
    q, k, v = make_qkv(1, 2, 7, 9, head_dim=3, seed=55, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v):
        return impl.sliding_window.sliding_window_attention(q, k, v, 3, block_size=2)

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5), "gradcheck failed"


def test_queries_without_keys_get_zero_gradients(impl):
    q, k, v = make_qkv(1, 2, 9, 4, head_dim=4, seed=56, dtype=torch.float64, requires_grad=True)
    out = impl.sliding_window.sliding_window_attention(q, k, v, 3, block_size=4)
    out.sum().backward()
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert_no_nan(t.grad, what=f"d{name}", hint="queries before key 0 must give zero gradients, never NaN")
    assert_close(q.grad[:, :, :5], torch.zeros(1, 2, 5, 4, dtype=torch.float64),
                 what="dq of the 5 queries that see no key", hint="their output is a constant 0: gradient 0")


# ---------------------------------------------------------- rolling cache --

def test_reset_starts_a_new_sequence_in_the_same_memory(impl, device):
    B, H, D, W = 2, 2, 4, 5
    cache = impl.sliding_window.RollingKVCache(B, H, W, D, device=device)
    pointers = (cache.k_cache.data_ptr(), cache.v_cache.data_ptr())
    for seed, chunks in ((57, [3, 1, 1, 6, 1]), (58, [1, 1, 2]), (59, [7, 2])):
        q, k, v = make_qkv(B, H, sum(chunks), head_dim=D, seed=seed, device=device)
        cache.reset()
        assert cache.seq_len == 0, f"after reset() seq_len should be 0, got {cache.seq_len}"
        k_vis, _ = cache.update(k[:, :, :chunks[0]], v[:, :, :chunks[0]])
        assert k_vis.shape[2] == chunks[0], (
            f"the first update after reset() returned {k_vis.shape[2]} entries for {chunks[0]} new ones: nothing of "
            "the previous sequence may be visible (reset seq_len to 0)")
        cache.reset()
        out = decode(impl, q, k, v, W, chunks, cache, block_size=2)
        assert_close(out, sliding_window_attention_ref(q, k, v, W), what=f"decoding after reset (chunks {chunks})")
    assert (cache.k_cache.data_ptr(), cache.v_cache.data_ptr()) == pointers, (
        "reset() should keep the ring buffers: it only rewinds seq_len")


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(chunks=st.lists(st.integers(1, 9), min_size=1, max_size=10), window=st.integers(1, 8),
       heads=st.sampled_from([1, 3]), head_dim=st.sampled_from([1, 5]), seed=st.integers(0, 2**16))
def test_random_chunkings_equal_the_full_computation(impl, chunks, window, heads, head_dim, seed):
    total = sum(chunks)
    q, k, v = make_qkv(2, heads, total, head_dim=head_dim, seed=seed)
    cache = impl.sliding_window.RollingKVCache(2, heads, window, head_dim)
    out = decode(impl, q, k, v, window, chunks, cache, block_size=3)
    assert cache.seq_len == total, f"after chunks {chunks} seq_len should be {total}, got {cache.seq_len}"
    assert cache.held == min(total, window - 1), f"held should be min(seq_len, window - 1), got {cache.held}"
    assert_close(out, sliding_window_attention_ref(q, k, v, window), hint=f"chunks {chunks}, window {window}")


def test_long_decode_in_constant_memory(impl):
    # 300 tokens through a window of 16: the ring wraps about 20 times.
    q, k, v = make_qkv(1, 2, 300, head_dim=8, seed=60)
    cache = impl.sliding_window.RollingKVCache(1, 2, 16, 8)
    nbytes = cache.nbytes
    out = decode(impl, q, k, v, 16, [1] * 300, cache)
    assert cache.nbytes == nbytes == 2 * 1 * 2 * 15 * 8 * 4, (
        f"the ring should stay 2 * B * H * (window - 1) * D * 4 = {2 * 2 * 15 * 8 * 4} bytes, got {cache.nbytes}")
    assert_close(out, sliding_window_attention_ref(q, k, v, 16))


def test_visible_entries_survive_later_updates(impl):
    cache = impl.sliding_window.RollingKVCache(1, 1, 4, 2)
    k, v = randn(1, 1, 9, 2, seed=61), randn(1, 1, 9, 2, seed=62)
    k_vis, v_vis = cache.update(k[:, :, :3], v[:, :, :3])
    saved = k_vis.clone()
    for t in range(3, 9):
        cache.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
    assert_close(k_vis, saved, what="k_visible returned by an earlier update",
                 hint="return a new tensor (torch.cat), not a view of the ring, which later updates overwrite")


def test_update_copies_its_inputs(impl):
    cache = impl.sliding_window.RollingKVCache(1, 2, 4, 3)
    k, v = randn(1, 2, 2, 3, seed=63), randn(1, 2, 2, 3, seed=64)
    cache.update(k, v)
    expected_k, expected_v = k.clone(), v.clone()
    k.add_(100.0)
    v.add_(100.0)
    k_vis, v_vis = cache.update(randn(1, 2, 1, 3, seed=65), randn(1, 2, 1, 3, seed=66))
    assert_close(k_vis[:, :, :2], expected_k, what="held keys after the caller modified its k",
                 hint="copy the new entries into the ring; do not keep a reference to the caller's tensor")
    assert_close(v_vis[:, :, :2], expected_v, what="held values after the caller modified its v")


# ------------------------------------------------------------ other cases --

def test_non_contiguous_inputs(impl, device):
    q = randn(2, 31, 3, 8, seed=67, device=device).transpose(1, 2)  # (B, H, L, D) with odd strides
    k = randn(2, 31, 3, 8, seed=68, device=device).transpose(1, 2)
    v = randn(2, 3, 8, 31, seed=69, device=device).transpose(-2, -1)
    out = impl.sliding_window.sliding_window_attention(q, k, v, 6, block_size=8)
    assert_close(out, sliding_window_attention_ref(q, k, v, 6), hint="use reshape or slicing that respects strides")


def test_mask_on_a_device(impl, device):
    mask = impl.sliding_window.sliding_window_mask(5, 9, 3, device=device)
    assert mask.device.type == device, f"mask on {mask.device}, expected {device}"
    assert_same_mask(mask, sliding_window_mask_ref(5, 9, 3))


def test_one_key_many_queries(impl):
    q, k, v = make_qkv(1, 1, 5, 1, head_dim=2, seed=70)
    out = impl.sliding_window.sliding_window_attention(q, k, v, 3, block_size=2)
    expected = torch.zeros(1, 1, 5, 2)
    expected[:, :, -1] = v[:, :, 0]  # only the last query (position 0) sees the key, with weight 1
    assert_close(out, expected, hint="query i of 5 sits at position i - 4: only the last one sees key 0")


# --------------------------------------------------------------- bad input --

@pytest.mark.parametrize("name,position", [("batch_size", 0), ("num_heads", 1), ("window", 2), ("head_dim", 3)])
def test_bad_cache_arguments_are_rejected(impl, name, position):
    for bad in (0, -2, 2.5, True):
        args = [2, 3, 8, 4]
        args[position] = bad
        assert_rejects(lambda: impl.sliding_window.RollingKVCache(*args), name)
    assert_rejects(lambda: impl.sliding_window.RollingKVCache(2, 3, 8, 4, dtype=torch.int64), "dtype")


def test_bad_mask_lengths_are_rejected(impl):
    mask = impl.sliding_window.sliding_window_mask
    assert_rejects(lambda: mask(-1, 4, 2), "q_len")
    assert_rejects(lambda: mask(4, -1, 2), "k_len")
    assert_rejects(lambda: mask(4.0, 4, 2), "q_len")
    assert_rejects(lambda: mask(4, None, 2), "k_len")


# ------------------------------------------------------------ zero sizes --

def test_zero_lengths_give_empty_results(impl):
    # A zero-length dimension is valid and gives an empty, correctly shaped
    # result (tutorial/CONVENTIONS.md); only negative lengths are errors.
    sw = impl.sliding_window
    for q_len, k_len in ((0, 4), (3, 0), (0, 0)):
        got = sw.sliding_window_mask(q_len, k_len, 2)
        assert_same_mask(got, sliding_window_mask_ref(q_len, k_len, 2), what=f"sliding_window_mask({q_len}, {k_len}, 2)",
                         hint="a zero length gives an empty (q_len, k_len) bool mask, not an error")
    q, k, v = make_qkv(2, 3, 0, 6, head_dim=4, v_dim=5, seed=80)
    out = sw.sliding_window_attention(q, k, v, 3, block_size=4)
    assert out.shape == (2, 3, 0, 5), f"no queries: output shape {tuple(out.shape)}, expected (B, H, 0, Dv) = (2, 3, 0, 5)"
    q, k, v = make_qkv(2, 3, 4, 0, head_dim=4, v_dim=5, seed=81)
    out = sw.sliding_window_attention(q, k, v, 3, block_size=4)
    assert_no_nan(out, hint="no keys: every query sees nothing and gives 0")
    assert_close(out, torch.zeros(2, 3, 4, 5), what="output over zero keys",
                 hint="with Lk = 0 every query sits before key 0: output 0, shape (B, H, Lq, Dv)")


def test_an_empty_update_returns_the_held_entries_and_changes_nothing(impl):
    cache = impl.sliding_window.RollingKVCache(1, 2, 4, 3)
    k, v = randn(1, 2, 5, 3, seed=82), randn(1, 2, 5, 3, seed=83)
    cache.update(k, v)
    nothing = torch.zeros(1, 2, 0, 3)
    for step in range(2):
        k_vis, v_vis = cache.update(nothing, nothing)
        assert cache.seq_len == 5, f"an empty update changed seq_len from 5 to {cache.seq_len}: it is a no-op"
        assert_close(k_vis, k[:, :, 2:], what=f"k_visible of empty update {step}",
                     hint="an empty update returns the held past (the last window - 1 = 3 keys, oldest first)")
        assert_close(v_vis, v[:, :, 2:], what=f"v_visible of empty update {step}")
    k_new, v_new = randn(1, 2, 1, 3, seed=84), randn(1, 2, 1, 3, seed=85)
    k_vis, _ = cache.update(k_new, v_new)
    assert_close(k_vis, torch.cat([k[:, :, 2:], k_new], dim=2), what="k_visible after the empty updates",
                 hint="an empty update must not write into (or advance) the ring")
