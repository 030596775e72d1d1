"""L10 advanced suite: float64 exactness, lse dtypes, large logits, zero sizes,
strided cache views, random shapes (Hypothesis), and the Triton kernel at
groups larger than one tile, many splits, bfloat16 and on a real GPU.

Run: ./course test L10 --advanced   (or: pytest testcases/L10_decode_attention)
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coursekit.reference import decode_attention_ref, decode_visible_ref
from coursekit.testing import assert_close, assert_no_nan, assert_within_eager_error, randn

STABILITY_HINT = ("with large logits exp(lse) overflows: merge with weights exp(lse_x - max(lse_a, lse_b)), never "
                  "exp(lse_x) itself, and subtract each chunk's running max before exponentiating")


def decode_inputs(batch, heads, kv_heads, q_len, seq_len, *, head_dim=8, seed=0, dtype=torch.float32, device="cpu"):
    q = randn(batch, heads, q_len, head_dim, seed=seed, dtype=dtype, device=device)
    k = randn(batch, kv_heads, seq_len, head_dim, seed=seed + 1, dtype=dtype, device=device)
    v = randn(batch, kv_heads, seq_len, head_dim, seed=seed + 2, dtype=dtype, device=device)
    return q, k, v


def eager_decode(q, k, v, kv_lens):
    """Plain PyTorch in q's dtype: the yardstick of the eager-error rule."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Lq, D) @ (B, H, D, T) -> (B, H, Lq, T)
    visible = decode_visible_ref(kv_lens, q.shape[2], k.shape[2], device=q.device)[:, None]
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1).nan_to_num(0.0) @ v


# --------------------------------------------------------------- CPU path --

def test_float64_to_rounding(impl):
    q, k, v = decode_inputs(3, 6, 2, 3, 29, seed=30, dtype=torch.float64)
    kv_lens = torch.tensor([29, 0, 11])
    out, lse = impl.decode_attention.split_kv_attention(q, k, v, 4, kv_lens=kv_lens)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64, (
        f"float64 inputs give float64 out and lse, got {out.dtype} and {lse.dtype}")
    want_out, want_lse = decode_attention_ref(q, k, v, kv_lens)
    assert_close(out, want_out, what="float64 out")
    assert_close(lse, want_lse, what="float64 lse")


def test_lse_is_float32_for_float32_and_half(impl):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        q, k, v = decode_inputs(1, 2, 1, 1, 7, seed=31, dtype=dtype)
        _, lse = impl.decode_attention.split_kv_attention(q, k, v, 2)
        assert lse.dtype == torch.float32, f"{dtype} inputs: lse must be float32, got {lse.dtype}"


def test_large_logits_do_not_overflow(impl):
    # scores of O(100): exp(lse) is inf in float32; an exact merge never forms it
    q, k, v = decode_inputs(2, 4, 2, 2, 33, seed=32)
    q = q * 40
    out, lse = impl.decode_attention.split_kv_attention(q, k, v, 5)
    assert_no_nan(out, hint=STABILITY_HINT)
    want_out, want_lse = decode_attention_ref(q, k, v)
    assert_close(out, want_out, what="out with logits of O(100)", hint=STABILITY_HINT)
    assert_close(lse, want_lse, what="lse with logits of O(100)", hint=STABILITY_HINT)


def test_merge_of_large_lse(impl):
    out_a, out_b = randn(1, 1, 3, 4, seed=33), randn(1, 1, 3, 4, seed=34)
    lse_a = torch.tensor([[[500.0, 90.0, -300.0]]])
    lse_b = torch.tensor([[[499.0, 95.0, -310.0]]])
    out, lse = impl.decode_attention.merge_partials(out_a, lse_a, out_b, lse_b)
    la, lb = lse_a.double(), lse_b.double()
    want_lse = torch.logaddexp(la, lb)
    want = torch.exp(la - want_lse)[..., None] * out_a.double() + torch.exp(lb - want_lse)[..., None] * out_b.double()
    assert_close(lse, want_lse, dtype=torch.float32, what="lse of parts with lse ~ 500", hint=STABILITY_HINT)
    assert_close(out, want, what="out of parts with lse ~ 500", hint=STABILITY_HINT)


def test_merge_in_float64_keeps_float64(impl):
    out_a, out_b = randn(2, 3, 4, seed=35, dtype=torch.float64), randn(2, 3, 4, seed=36, dtype=torch.float64)
    lse_a, lse_b = randn(2, 3, seed=37, dtype=torch.float64), randn(2, 3, seed=38, dtype=torch.float64)
    out, lse = impl.decode_attention.merge_partials(out_a, lse_a, out_b, lse_b)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64, (
        f"float64 parts merge in float64, got out {out.dtype}, lse {lse.dtype}")
    want_lse = torch.logaddexp(lse_a, lse_b)
    assert_close(lse, want_lse, what="float64 merged lse")


def test_zero_sizes(impl):
    da = impl.decode_attention
    q, k, v = decode_inputs(2, 4, 2, 1, 0, seed=39)  # an empty cache: T = 0
    out, lse = da.split_kv_attention(q, k, v, 3)
    assert out.shape == (2, 4, 1, 8) and lse.shape == (2, 4, 1), f"shapes {tuple(out.shape)}, {tuple(lse.shape)}"
    assert_close(out, torch.zeros_like(out), what="out over an empty cache", hint="no key: out 0")
    assert torch.isneginf(lse).all(), "no key: lse -inf"
    q, k, v = decode_inputs(0, 4, 2, 1, 5, seed=40)  # an empty batch
    out, lse = da.split_kv_attention(q, k, v, 2, kv_lens=torch.zeros(0, dtype=torch.int64))
    assert out.shape == (0, 4, 1, 8) and lse.shape == (0, 4, 1), "an empty batch gives empty, correctly shaped results"
    q, k, v = decode_inputs(1, 2, 1, 0, 5, seed=41)  # no query
    out, lse = da.split_kv_attention(q, k, v, 2)
    assert out.shape == (1, 2, 0, 8) and lse.shape == (1, 2, 0), "Lq = 0 gives empty, correctly shaped results"


def test_strided_cache_view_and_int32_lengths(impl):
    # a preallocated cache (B, Hkv, max_len, D) sliced to its filled length: a strided view
    buffer = randn(2, 2, 40, 8, seed=42)
    k, v = buffer[:, :, :23], randn(2, 2, 40, 8, seed=43)[:, :, :23]
    q = randn(2, 4, 1, 8, seed=44)
    kv_lens = torch.tensor([23, 9], dtype=torch.int32)
    out, lse = impl.decode_attention.split_kv_attention(q, k, v, 3, kv_lens=kv_lens)
    want_out, want_lse = decode_attention_ref(q, k, v, kv_lens)
    assert_close(out, want_out, what="out over a strided cache view with int32 kv_lens")
    assert_close(lse, want_lse, what="lse over a strided cache view with int32 kv_lens")


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), kv_heads=st.sampled_from([1, 2, 3]), group=st.sampled_from([1, 2, 4]),
       q_len=st.integers(1, 5), seq_len=st.integers(1, 30), num_splits=st.integers(1, 12), seed=st.integers(0, 999),
       data=st.data())
def test_random_shapes_match_sdpa(impl, batch, kv_heads, group, q_len, seq_len, num_splits, seed, data):
    lens = data.draw(st.lists(st.integers(0, seq_len), min_size=batch, max_size=batch))
    q, k, v = decode_inputs(batch, kv_heads * group, kv_heads, q_len, seq_len, seed=seed)
    kv_lens = torch.tensor(lens)
    out, lse = impl.decode_attention.split_kv_attention(q, k, v, num_splits, kv_lens=kv_lens)
    want_out, want_lse = decode_attention_ref(q, k, v, kv_lens)
    case = f"B={batch} H={kv_heads * group} Hkv={kv_heads} Lq={q_len} T={seq_len} splits={num_splits} kv_lens={lens}"
    assert_close(out, want_out, what=f"out ({case})")
    assert_close(lse, want_lse, what=f"lse ({case})")


# ------------------------------------------------------------ Triton path --

@pytest.mark.triton
def test_triton_group_larger_than_one_tile(impl, triton_device):
    # MQA with 32 query heads and Lq = 4: 128 packed rows, more than one tile of rows
    q, k, v = decode_inputs(2, 32, 1, 4, 21, head_dim=16, seed=50, device=triton_device)
    kv_lens = torch.tensor([21, 6], device=triton_device)
    out, lse = impl.decode_attention_triton.triton_decode_attention(q, k, v, kv_lens=kv_lens, num_splits=2)
    want_out, want_lse = decode_attention_ref(q, k, v, kv_lens.cpu())
    hint = "G * Lq = 128 rows need several row blocks (grid axis 2); every block must map its rows to (head, query)"
    assert_close(out, want_out, what="triton out, 128 packed rows", hint=hint)
    assert_close(lse, want_lse, what="triton lse, 128 packed rows", hint=hint)


@pytest.mark.triton
def test_triton_more_splits_than_tiles_and_odd_head_dim(impl, triton_device):
    q, k, v = decode_inputs(2, 4, 2, 1, 30, head_dim=12, seed=51, device=triton_device)
    out, lse = impl.decode_attention_triton.triton_decode_attention(q, k, v, num_splits=9)
    want_out, want_lse = decode_attention_ref(q, k, v)
    assert_close(out, want_out, what="triton out, 9 splits of a 30-key cache, D = 12",
                 hint="empty splits report lse -inf; the head dim is padded to a power of two and masked")
    assert_close(lse, want_lse, what="triton lse, 9 splits of a 30-key cache, D = 12")


@pytest.mark.triton
def test_triton_strided_cache_and_empty_cache(impl, triton_device):
    dt = impl.decode_attention_triton
    q = randn(2, 4, 1, 16, seed=52, device=triton_device)
    k = randn(2, 2, 48, 16, seed=53, device=triton_device)[:, :, :19]
    v = randn(2, 2, 48, 16, seed=54, device=triton_device)[:, :, :19]
    kv_lens = torch.tensor([19, 4], dtype=torch.int32, device=triton_device)
    out, lse = dt.triton_decode_attention(q, k, v, kv_lens=kv_lens)
    want_out, want_lse = decode_attention_ref(q, k, v, kv_lens.cpu())
    assert_close(out, want_out, what="triton out over a strided cache view",
                 hint="read k and v through their strides (a cache buffer sliced to T is not contiguous)")
    assert_close(lse, want_lse, what="triton lse over a strided cache view")
    out, lse = dt.triton_decode_attention(q, k[:, :, :0], v[:, :, :0])
    assert_close(out, torch.zeros_like(out), what="triton out over an empty cache", hint="no key: out 0")
    assert torch.isneginf(lse).all(), "triton lse over an empty cache must be -inf"


@pytest.mark.triton
def test_triton_bfloat16_within_eager_error(impl, triton_device):
    if triton_device == "cpu":
        pytest.skip("the Triton interpreter does not emulate bfloat16 arithmetic (float16 is tested in the basic suite)")
    q, k, v = decode_inputs(2, 4, 1, 2, 33, head_dim=16, seed=55, dtype=torch.bfloat16, device=triton_device)
    kv_lens = torch.tensor([33, 10], device=triton_device)
    out, _ = impl.decode_attention_triton.triton_decode_attention(q, k, v, kv_lens=kv_lens, num_splits=2)
    assert out.dtype == torch.bfloat16, f"out must keep bfloat16, got {out.dtype}"
    want_out, _ = decode_attention_ref(q, k, v, kv_lens.cpu())
    assert_within_eager_error(out, want_out, eager_decode(q, k, v, kv_lens), what="triton bfloat16 out")


# ---------------------------------------------- on a CUDA GPU, real sizes --

@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("kv_heads", [32, 8, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_triton_gpu_decode_step(impl, kv_heads, dtype):
    q, k, v = decode_inputs(3, 32, kv_heads, 1, 5000, head_dim=128, seed=60, dtype=dtype, device="cuda")
    kv_lens = torch.tensor([5000, 1, 3111], device="cuda")
    for num_splits in (None, 1, 7, 64):
        out, lse = impl.decode_attention_triton.triton_decode_attention(q, k, v, kv_lens=kv_lens,
                                                                        num_splits=num_splits)
        want_out, want_lse = decode_attention_ref(q, k, v, kv_lens.cpu())
        assert_within_eager_error(out, want_out, eager_decode(q, k, v, kv_lens),
                                  what=f"out (Hkv={kv_heads}, {dtype}, num_splits={num_splits})")
        assert_close(lse, want_lse, dtype=dtype, what=f"lse (Hkv={kv_heads}, {dtype}, num_splits={num_splits})")


@pytest.mark.gpu
@pytest.mark.triton
def test_triton_gpu_speculative_queries(impl):
    q, k, v = decode_inputs(2, 32, 8, 8, 3000, head_dim=128, seed=61, dtype=torch.bfloat16, device="cuda")
    kv_lens = torch.tensor([3000, 1500], device="cuda")
    out, _ = impl.decode_attention_triton.triton_decode_attention(q, k, v, kv_lens=kv_lens)
    want_out, _ = decode_attention_ref(q, k, v, kv_lens.cpu())
    assert_within_eager_error(out, want_out, eager_decode(q, k, v, kv_lens), what="out with Lq = 8")
