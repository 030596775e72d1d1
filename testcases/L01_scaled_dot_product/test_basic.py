"""L01 basic suite: the scale, the scores, attention with and without masks.

Run: ./course test L01    (or: pytest testcases/L01_scaled_dot_product -m basic)
Expected values come from coursekit.reference (float64 einsum + torch.softmax)
and from torch.nn.functional.scaled_dot_product_attention.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from coursekit.reference import attention_ref
from coursekit.testing import assert_close, make_qkv, random_bool_mask

# (batch, heads, Lq, Lk, D, Dv): square, rectangular both ways, Dv != D, odd sizes.
SHAPES = [
    (1, 1, 4, 4, 8, 8),
    (2, 3, 5, 7, 16, 16),
    (2, 2, 9, 3, 8, 5),
    (3, 4, 17, 33, 64, 24),
]
SHAPE_IDS = ["square", "Lq<Lk", "Lq>Lk_Dv!=D", "odd"]


@pytest.mark.parametrize("head_dim", [1, 2, 8, 64, 100, 128])
def test_attention_scale_is_one_over_sqrt_head_dim(impl, head_dim):
    got = impl.scaled_dot_product.attention_scale(head_dim)
    assert math.isclose(got, 1.0 / math.sqrt(head_dim), rel_tol=1e-12), (
        f"attention_scale({head_dim}) = {got}, expected 1/sqrt({head_dim}) = {1 / math.sqrt(head_dim)}"
        " (a common slip is 1/d instead of 1/sqrt(d))")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_attention_scores_match_einsum(impl, device, shape):
    b, h, lq, lk, d, dv = shape
    q, k, _ = make_qkv(b, h, lq, lk, d, dv, device=device)
    scores = impl.scaled_dot_product.attention_scores(q, k)
    expected = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) / math.sqrt(d)
    assert_close(scores, expected, what="scores", hint=(
        "scores[b, h, i, j] should be q[b, h, i] . k[b, h, j] / sqrt(D): "
        "check which dims of k you transpose and that you apply the scale"))


@pytest.mark.parametrize("scale", [0.3, 0.0, -0.5])
def test_attention_scores_custom_scale(impl, device, scale):
    q, k, _ = make_qkv(2, 2, 6, 5, 8, device=device)
    scores = impl.scaled_dot_product.attention_scores(q, k, scale=scale)
    expected = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * scale
    assert_close(scores, expected, what="scores", hint=(
        f"an explicit scale={scale} replaces 1/sqrt(D). `scale or attention_scale(D)` turns 0.0 into the "
        "default (0.0 is falsy): test `scale is None`"))


def test_attention_with_an_explicit_zero_scale_averages_the_values(impl, device):
    # scale=0.0 makes every score 0: uniform weights, each query returns the mean of v.
    q, k, v = make_qkv(2, 2, 4, 6, 8, device=device, seed=9)
    out = impl.scaled_dot_product.scaled_dot_product_attention(q, k, v, scale=0.0)
    assert_close(out, F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.0),
                 hint="scale=0.0 is a valid scale, not 'no scale given': test `scale is None`, not `scale or ...`")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_attention_matches_reference(impl, device, shape):
    b, h, lq, lk, d, dv = shape
    q, k, v = make_qkv(b, h, lq, lk, d, dv, device=device, seed=1)
    out = impl.scaled_dot_product.scaled_dot_product_attention(q, k, v)
    expected, _ = attention_ref(q, k, v)
    assert out.shape == (b, h, lq, dv), f"output shape {tuple(out.shape)}, expected (B, H, Lq, Dv) = {(b, h, lq, dv)}"
    assert_close(out, expected, hint="out = softmax(q k^T / sqrt(D), dim=-1) @ v: softmax runs over the keys (last dim)")


def test_attention_matches_torch_sdpa(impl, device):
    q, k, v = make_qkv(2, 4, 11, 13, 32, device=device, seed=2)
    out = impl.scaled_dot_product.scaled_dot_product_attention(q, k, v, scale=0.2)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.2),
                 hint="should agree with torch.nn.functional.scaled_dot_product_attention")


def test_boolean_mask_true_means_attend(impl, device):
    q, k, v = make_qkv(2, 3, 6, 9, 8, device=device, seed=3)
    mask = random_bool_mask(2, 3, 6, 9, seed=3, device=device)
    mask[..., 0] = True  # no fully masked rows here; they have their own test
    out = impl.scaled_dot_product.scaled_dot_product_attention(q, k, v, mask=mask)
    expected, _ = attention_ref(q, k, v, mask)
    assert_close(out, expected, hint=(
        "boolean masks are True where a query MAY attend (as in F.scaled_dot_product_attention): "
        "fill the scores with -inf where the mask is False"))


def test_additive_mask_is_added_to_scores(impl, device):
    q, k, v = make_qkv(2, 2, 5, 7, 8, device=device, seed=4)
    bias = torch.randn(5, 7, generator=torch.Generator().manual_seed(4)).to(device)
    bias[:, 3] = -math.inf
    out = impl.scaled_dot_product.scaled_dot_product_attention(q, k, v, mask=bias)
    expected, _ = attention_ref(q, k, v, bias)
    assert_close(out, expected, hint="a float mask is added to the scores (0 keeps, -inf drops, other values bias)")


def test_returned_weights_match_reference(impl, device):
    q, k, v = make_qkv(2, 3, 6, 8, 16, device=device, seed=5)
    mask = random_bool_mask(6, 8, seed=5, device=device)
    mask[:, 0] = True
    out, weights = impl.scaled_dot_product.scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    expected_out, expected_weights = attention_ref(q, k, v, mask)
    assert_close(weights, expected_weights, probabilities=True, what="weights",
                 hint="weights = softmax(scores + mask) over the last dim; each row sums to 1")
    assert_close(out, expected_out)


def test_fully_masked_row_gives_zeros(impl, device):
    q, k, v = make_qkv(1, 2, 4, 5, 8, device=device, seed=6)
    mask = torch.ones(4, 5, dtype=torch.bool, device=device)
    mask[2] = False  # query 2 may attend to nothing
    out, weights = impl.scaled_dot_product.scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    assert not torch.isnan(out).any(), (
        "NaN in the output: softmax of an all -inf row is 0/0. "
        "The course convention is output 0 and weights 0 for a fully masked row")
    assert_close(out[:, :, 2], torch.zeros(1, 2, 8), what="output of the fully masked row")
    assert_close(weights[:, :, 2], torch.zeros(1, 2, 5), probabilities=True, what="weights of the fully masked row")
    expected, _ = attention_ref(q, k, v, mask)
    assert_close(out, expected, hint="the other rows must be unaffected")


def test_float16_scores_are_computed_in_float32(impl, device):
    # Entries of 24 with D = 128 give raw dot products up to 24*24*128 = 73728,
    # past float16's largest value 65504: only float32 arithmetic gets this right.
    q, k, v = make_qkv(1, 2, 4, 6, 128, device=device, seed=7)
    q, k = (24 * q.sign()).half(), (24 * k.sign()).half()
    k[..., 0, :] = q[..., 0, :]  # one key aligned with query 0: its dot product is exactly 73728
    v = v.half()
    out = impl.scaled_dot_product.scaled_dot_product_attention(q, k, v)
    assert out.dtype == torch.float16, f"output dtype {out.dtype}: outputs keep the input dtype (float16)"
    expected, _ = attention_ref(q, k, v)
    assert_close(out, expected, hint=(
        "float16 inputs: compute q @ k^T, the softmax and the weighted sum in float32 "
        "(a float16 dot product overflows past 65504), then cast the output back to float16"))


def test_dropout_is_off_when_not_training(impl, device):
    q, k, v = make_qkv(2, 2, 5, 5, 8, device=device, seed=8)
    out = impl.scaled_dot_product.scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=False)
    expected, _ = attention_ref(q, k, v)
    assert_close(out, expected, hint="dropout applies only when training=True (as nn.Dropout in eval mode)")
