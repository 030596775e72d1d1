"""L01 advanced suite: half precision, extreme logits, masked rows and their
gradients, gradcheck, random shapes against torch's SDPA, dropout, bad input.

Run: ./course test L01 --advanced
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from coursekit.reference import attention_ref
from coursekit.testing import assert_close, assert_no_nan, assert_rejects, make_qkv, random_bool_mask, randn


def attention(impl, *args, **kwargs):
    return impl.scaled_dot_product.scaled_dot_product_attention(*args, **kwargs)


# ---------------------------------------------------------------- precision --

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(impl, device, dtype):
    q, k, v = make_qkv(2, 3, 33, 47, 64, dtype=dtype, device=device, seed=10)
    mask = random_bool_mask(33, 47, seed=10, device=device)
    mask[:, 0] = True
    out, weights = attention(impl, q, k, v, mask=mask, return_weights=True)
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected the input dtype {dtype}"
    expected_out, expected_weights = attention_ref(q, k, v, mask)  # float64 from the same half inputs
    assert_close(out, expected_out, hint=f"{dtype} inputs: accumulate scores and softmax in float32")
    assert_close(weights, expected_weights, probabilities=True, dtype=dtype, what="weights")


def test_bfloat16_scores_keep_float32_resolution(impl, device):
    # bfloat16 has 8 bits of mantissa: scores near 100 would be rounded to
    # multiples of 0.5 in bfloat16, changing the weights by up to 25%.
    q, k, v = make_qkv(1, 1, 8, 16, 64, dtype=torch.bfloat16, device=device, seed=11)
    scores = impl.scaled_dot_product.attention_scores(q, k, scale=12.0)
    expected = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * 12.0
    assert_close(scores, expected, dtype=torch.float32, what="scores",
                 hint="scores of half-precision inputs are returned in float32")


# ----------------------------------------------------------- extreme logits --

def test_huge_logits_do_not_overflow(impl, device):
    # Integer entries and a power-of-two scale make every score exact in float32:
    # logits reach about +-1.5e5, so the softmax must subtract the row max.
    gen = torch.Generator().manual_seed(12)
    q = torch.randint(-3, 4, (2, 2, 6, 16), generator=gen).float().to(device)
    k = torch.randint(-3, 4, (2, 2, 9, 16), generator=gen).float().to(device)
    v = randn(2, 2, 9, 8, seed=12, device=device)
    out = attention(impl, q, k, v, scale=1024.0)
    assert_no_nan(out, hint="exp of a logit above 88.7 overflows float32: subtract the row max first")
    expected, _ = attention_ref(q, k, v, scale=1024.0)
    assert_close(out, expected)


@pytest.mark.parametrize("bias", [1e4, -1e4], ids=["plus1e4", "minus1e4"])
def test_large_constant_bias_changes_nothing(impl, device, bias):
    # softmax(s + c) = softmax(s): a constant additive mask of +-1e4 must not
    # change the output (float64 keeps the shifted scores exact enough).
    q, k, v = make_qkv(2, 2, 5, 7, 8, dtype=torch.float64, device=device, seed=13)
    shifted = attention(impl, q, k, v, mask=torch.full((5, 7), bias, dtype=torch.float64, device=device))
    assert_close(shifted, attention_ref(q, k, v)[0], hint="exp(1e4) overflows: subtract the row max")


def test_tiny_scale_gives_uniform_weights(impl, device):
    q, k, v = make_qkv(2, 2, 5, 7, 8, device=device, seed=14)
    out, weights = attention(impl, q, k, v, scale=1e-9, return_weights=True)
    assert_close(weights, torch.full((2, 2, 5, 7), 1 / 7), probabilities=True, what="weights",
                 hint="near-zero logits give near-uniform weights 1/Lk")
    assert_close(out, v.double().mean(dim=-2, keepdim=True).expand(2, 2, 5, 8))


# ------------------------------------------------------------ masked rows --

def test_fully_masked_rows_with_additive_mask(impl, device):
    q, k, v = make_qkv(2, 2, 5, 6, 8, device=device, seed=15)
    bias = torch.zeros(2, 1, 5, 6, device=device)
    bias[0, :, 1] = -math.inf
    bias[1, :, 4] = -math.inf
    out, weights = attention(impl, q, k, v, mask=bias, return_weights=True)
    assert_no_nan(out, hint="a row of -inf scores must give zeros, not 0/0")
    expected_out, expected_weights = attention_ref(q, k, v, bias)
    assert_close(out, expected_out)
    assert_close(weights, expected_weights, probabilities=True, what="weights")


def test_neg_inf_entries_equal_boolean_mask(impl, device):
    q, k, v = make_qkv(2, 3, 6, 9, 16, device=device, seed=16)
    keep = random_bool_mask(2, 1, 6, 9, seed=16, device=device)
    keep[..., 0] = True
    bias = torch.zeros(keep.shape, device=device).masked_fill(~keep, -math.inf)
    assert_close(attention(impl, q, k, v, mask=bias), attention(impl, q, k, v, mask=keep),
                 hint="an additive 0/-inf mask and the boolean mask it encodes must agree")


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_gradients_through_fully_masked_row_are_zero(impl, device, kind):
    # Query 1 sees no key. Its output is the constant 0, so dq of that row is 0 and
    # dk, dv are what the other rows alone give: SDPA on the other rows is the reference.
    q, k, v = make_qkv(1, 2, 4, 5, 8, dtype=torch.float64, device=device, seed=17, requires_grad=True)
    keep = torch.ones(4, 5, dtype=torch.bool, device=device)
    keep[1] = False
    keep[3, 1:] = False
    mask = keep if kind == "bool" else torch.zeros(4, 5, dtype=torch.float64, device=device).masked_fill(~keep, -math.inf)
    grad_out = randn(1, 2, 4, 8, seed=17, dtype=torch.float64, device=device)
    got = torch.autograd.grad(attention(impl, q, k, v, mask=mask), (q, k, v), grad_out)
    for name, g in zip("qkv", got):
        assert_no_nan(g, what=f"d(out)/d{name} with a {kind} mask", hint=(
            "backward through a fully masked row must not produce NaN. torch.nan_to_num after the softmax "
            "cleans the forward only: the softmax's own backward still computes 0/0 for that row. Guard the "
            "row before the softmax (masked_fill it with finite scores) and zero its weights after"))
    rows = [0, 2, 3]
    ref_inputs = [q.detach()[:, :, rows].clone().requires_grad_(), k.detach().clone().requires_grad_(),
                  v.detach().clone().requires_grad_()]
    ref_out = F.scaled_dot_product_attention(*ref_inputs, attn_mask=keep[rows])
    dq_rows, dk, dv = torch.autograd.grad(ref_out, ref_inputs, grad_out[:, :, rows])
    dq = torch.zeros_like(q).index_copy(2, torch.tensor(rows, device=device), dq_rows)
    for name, g, want in zip("qkv", got, (dq, dk, dv)):
        assert_close(g, want, what=f"d{name} with a {kind} mask",
                     hint="a query that attends to nothing contributes nothing to any gradient")


def test_gradient_reaches_an_additive_mask(impl, device):
    # dL/dmask = dL/dS: a float mask that requires grad is a probe for the score gradient.
    q, k, v = make_qkv(2, 2, 5, 6, 8, dtype=torch.float64, device=device, seed=27)
    bias = randn(2, 1, 5, 6, seed=27, dtype=torch.float64, device=device, requires_grad=True)
    grad_out = randn(2, 2, 5, 8, seed=28, dtype=torch.float64, device=device)
    (got,) = torch.autograd.grad(attention(impl, q, k, v, mask=bias), (bias,), grad_out)
    ref_bias = bias.detach().clone().requires_grad_()
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(8) + ref_bias
    (want,) = torch.autograd.grad(torch.softmax(scores, dim=-1) @ v, (ref_bias,), grad_out)
    assert_close(got, want, what="gradient of the additive mask", hint=(
        "add the float mask to the scores with `scores + mask`, so autograd sees it; a detached or in-place "
        "copied mask gets no gradient"))
# --------------------------------------------------------------- gradients --

@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
def test_gradcheck_float64(impl, with_mask):
    q, k, v = make_qkv(1, 2, 3, 4, 5, v_dim=3, dtype=torch.float64, seed=18, requires_grad=True)
    mask = random_bool_mask(3, 4, seed=18) if with_mask else None
    if with_mask:
        mask[:, 0] = True
    fn = lambda q, k, v: attention(impl, q, k, v, mask=mask)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5), "gradcheck failed"


def test_gradients_match_torch_sdpa(impl, device):
    q, k, v = make_qkv(2, 2, 7, 9, 16, device=device, seed=19, requires_grad=True)
    grad = randn(2, 2, 7, 16, seed=20, device=device)
    mask = random_bool_mask(7, 9, seed=19, device=device)
    mask[:, 0] = True
    ours = torch.autograd.grad(attention(impl, q, k, v, mask=mask), (q, k, v), grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(F.scaled_dot_product_attention(*ref_inputs, attn_mask=mask), ref_inputs, grad.double())
    for name, got, want in zip("qkv", ours, ref):
        assert_close(got, want, what=f"grad of {name}")


# ------------------------------------------ random shapes against torch SDPA --

MASK_KINDS = ["none", "bool_full", "bool_Lq_Lk", "bool_per_batch", "bool_per_head", "bool_keys_only", "additive"]


def make_mask(kind, b, h, lq, lk, seed):
    shapes = {"bool_full": (b, h, lq, lk), "bool_Lq_Lk": (lq, lk), "bool_per_batch": (b, 1, lq, lk),
              "bool_per_head": (1, h, lq, lk), "bool_keys_only": (b, 1, 1, lk), "additive": (b, 1, lq, lk)}
    if kind == "none":
        return None
    mask = random_bool_mask(*shapes[kind], seed=seed)
    mask[..., 0] = True  # SDPA and we agree on fully masked rows only from torch 2.5 on; keep rows non-empty
    if kind == "additive":
        return torch.zeros(mask.shape).masked_fill(~mask, -math.inf) + 0.1 * randn(*mask.shape, seed=seed)
    return mask


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(b=st.integers(1, 3), h=st.integers(1, 4), lq=st.integers(1, 20), lk=st.integers(1, 20),
       d=st.sampled_from([1, 3, 8, 16, 33]), dv=st.sampled_from([1, 4, 8, 17]),
       mask_kind=st.sampled_from(MASK_KINDS),
       scale=st.one_of(st.none(), st.floats(0.01, 3.0)), seed=st.integers(0, 2**16))
def test_random_shapes_agree_with_torch_sdpa(impl, b, h, lq, lk, d, dv, mask_kind, scale, seed):
    q, k, v = make_qkv(b, h, lq, lk, d, dv, seed=seed)
    mask = make_mask(mask_kind, b, h, lq, lk, seed)
    out = attention(impl, q, k, v, mask=mask, scale=scale)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                              attn_mask=None if mask is None else mask if mask.dtype == torch.bool
                                              else mask.double(), scale=scale)
    assert_close(out, expected, hint=f"shape (B={b}, H={h}, Lq={lq}, Lk={lk}, D={d}, Dv={dv}), "
                                     f"mask {mask_kind}, scale {scale}")


def test_non_contiguous_inputs(impl, device):
    # (B, L, H, D) tensors transposed to (B, H, L, D): strided views, as in a real model.
    q, k, v = (randn(2, 7, 3, 8, seed=s, device=device).transpose(1, 2) for s in (21, 22, 23))
    assert_close(attention(impl, q, k, v), attention_ref(q, k, v)[0],
                 hint="use operations that respect strides (matmul, transpose), not .view on raw storage")


# ----------------------------------------------------------------- dropout --

def test_dropout_zeroes_weights_and_rescales_the_rest(impl, device):
    q, k, v = make_qkv(2, 2, 16, 16, 8, device=device, seed=24)
    torch.manual_seed(0)
    out, weights = attention(impl, q, k, v, dropout_p=0.25, training=True, return_weights=True)
    _, clean = attention_ref(q, k, v)
    dropped = weights == 0
    fraction = dropped.float().mean().item()
    assert 0.15 < fraction < 0.35, f"{fraction:.0%} of the weights were dropped with dropout_p=0.25"
    assert_close(torch.where(dropped, 0.0, weights.double()), torch.where(dropped, 0.0, clean / 0.75), probabilities=True,
                 dtype=weights.dtype, what="kept weights", hint="kept weights are scaled by 1 / (1 - dropout_p)")
    assert_close(out, weights.double() @ v.double(), hint="the output uses the weights after dropout")


# --------------------------------------------------------------- bad input --

@pytest.mark.parametrize("lq,lk,b", [(0, 5, 2), (4, 0, 2), (4, 5, 0)], ids=["Lq=0", "Lk=0", "B=0"])
def test_zero_sizes_give_empty_or_zero_results(impl, device, lq, lk, b):
    # Zero sizes are valid: Lq = 0 or B = 0 gives an empty output; Lk = 0 means
    # every query sees no key, a fully masked row: output 0 and weights 0.
    q, k, v = make_qkv(b, 2, lq, lk, 8, v_dim=3, device=device, seed=29)
    out, weights = attention(impl, q, k, v, return_weights=True)
    assert tuple(out.shape) == (b, 2, lq, 3), f"output shape {tuple(out.shape)}, expected {(b, 2, lq, 3)}"
    assert tuple(weights.shape) == (b, 2, lq, lk), f"weights shape {tuple(weights.shape)}, expected {(b, 2, lq, lk)}"
    assert_close(out, torch.zeros(b, 2, lq, 3), hint="with no keys a query gets output 0 (a fully masked row)")


FLAGS = {"training": ("yes", 1, None, torch.tensor(True)), "return_weights": ("no", 1, None)}


@pytest.mark.parametrize("flag", FLAGS)
def test_flags_must_be_bool(impl, flag):
    q, k, v = make_qkv(1, 1, 3, 3, 4)
    for bad in FLAGS[flag]:
        assert_rejects(lambda: attention(impl, q, k, v, dropout_p=0.5, **{flag: bad}), flag)


def test_bad_head_dim_is_rejected(impl):
    scale = impl.scaled_dot_product.attention_scale
    assert_rejects(lambda: scale(0), "head_dim")
    assert_rejects(lambda: scale(-4), "head_dim")
    assert_rejects(lambda: scale(2.5), "head_dim")


BAD_SHAPES = {
    "q_is_1d": ((8,), (5, 8), (5, 8), "q"),
    "head_dim_mismatch": ((2, 2, 4, 8), (2, 2, 5, 6), (2, 2, 5, 6), "head_dim"),
    "k_v_length_mismatch": ((2, 2, 4, 8), (2, 2, 5, 8), (2, 2, 6, 8), "v"),
    "batch_mismatch": ((2, 2, 4, 8), (3, 2, 5, 8), (3, 2, 5, 8), "k"),
    "rank_mismatch": ((2, 2, 4, 8), (2, 5, 8), (2, 5, 8), "k"),
}


@pytest.mark.parametrize("case", BAD_SHAPES, ids=list(BAD_SHAPES))
def test_mismatched_shapes_are_rejected(impl, case):
    q_shape, k_shape, v_shape, name = BAD_SHAPES[case]
    q, k, v = torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape)
    assert_rejects(lambda: attention(impl, q, k, v), name, "q", "k")


def test_bad_masks_are_rejected(impl):
    q, k, v = make_qkv(2, 2, 4, 5, 8)
    assert_rejects(lambda: attention(impl, q, k, v, mask=torch.ones(4, 4, dtype=torch.bool)), "mask")
    assert_rejects(lambda: attention(impl, q, k, v, mask=torch.ones(3, 2, 4, 5, dtype=torch.bool)), "mask")
    assert_rejects(lambda: attention(impl, q, k, v, mask=torch.ones(4, 5, dtype=torch.int64)), "mask")


def test_bad_dtypes_and_arguments_are_rejected(impl):
    q, k, v = make_qkv(1, 1, 3, 3, 4)
    assert_rejects(lambda: attention(impl, q.long(), k.long(), v.long()), "q", "k", "v", "dtype")
    assert_rejects(lambda: attention(impl, q, k.double(), v), "k", "dtype")
    assert_rejects(lambda: attention(impl, q, k, v, dropout_p=1.5, training=True), "dropout_p")
    assert_rejects(lambda: attention(impl, q, k, v, dropout_p=-0.1, training=True), "dropout_p")
    assert_rejects(lambda: attention(impl, q, k, v, dropout_p="0.1", training=True), "dropout_p")
    assert_rejects(lambda: impl.scaled_dot_product.attention_scores(q, k, scale=math.nan), "scale")
    assert_rejects(lambda: impl.scaled_dot_product.attention_scores(q, k, scale="big"), "scale")
    assert_rejects(lambda: attention(impl, q.numpy(), k, v), "q")
