"""L02 advanced suite: half precision, extreme and -inf logits, gradients,
online = two-pass for every block size, invariants on random shapes, bad input.

Run: ./course test L02 --advanced
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coursekit.reference import logsumexp_ref, softmax_ref
from coursekit.testing import assert_close, assert_no_nan, assert_rejects, randn

NEG_INF = -math.inf
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None)


# ---------------------------------------------------------------- precision --

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", ["stable_softmax", "online_softmax", "logsumexp"])
def test_half_precision(impl, device, dtype, fn):
    x = randn(5, 300, seed=50, device=device, scale=4.0, dtype=dtype)
    x[1] = x[1] + 6e4 if dtype == torch.float16 else x[1] + 1e30  # near the top of each dtype's range
    args = (x, 7) if fn == "online_softmax" else (x,)
    got = getattr(impl.softmax, fn)(*args)
    assert got.dtype == dtype, f"{fn} returned {got.dtype} for {dtype} input: outputs keep the input dtype"
    expected = logsumexp_ref(x) if fn == "logsumexp" else softmax_ref(x)
    assert_close(got, expected, probabilities=fn != "logsumexp",
                 hint=f"{fn} of {dtype} input: compute in float32, cast the result back")


def test_float16_running_sum_is_kept_in_float32(impl, device):
    # 3000 equal logits read one at a time: a float16 running sum 1 + 1 + ...
    # stalls at 2048 (2048 + 1 rounds back to 2048), so every probability
    # would come out 1/2048 instead of 1/3000.
    x = torch.zeros(1, 3000, dtype=torch.float16, device=device)
    assert_close(impl.softmax.online_softmax(x, 1), softmax_ref(x), probabilities=True,
                 hint="keep the running max and sum in float32 for float16 input")


# ----------------------------------------------------------- extreme values --

@pytest.mark.parametrize("fn", ["stable_softmax", "online_softmax"])
def test_logits_of_plus_minus_1e4(impl, device, fn):
    x = torch.tensor([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4], [1e4, 1e4, 1e4 - 1.0],
                      [-1e4, 1e4, -1e4]], device=device)
    args = (x, 2) if fn == "online_softmax" else (x,)
    assert_close(getattr(impl.softmax, fn)(*args), softmax_ref(x), probabilities=True)


def test_tiny_logits_give_uniform_probabilities(impl, device):
    x = randn(3, 17, seed=51, device=device, scale=1e-30)
    assert_close(impl.softmax.stable_softmax(x), torch.full((3, 17), 1 / 17), probabilities=True)


def test_neg_inf_entries_get_zero_probability(impl, device):
    x = randn(4, 12, seed=52, device=device)
    x[:, ::3] = NEG_INF
    x[2] = NEG_INF
    for name, y in (("stable_softmax", impl.softmax.stable_softmax(x)),
                    ("online_softmax", impl.softmax.online_softmax(x, 5))):
        assert_close(y, softmax_ref(x), probabilities=True, what=name, hint="-inf logits get probability 0; all -inf rows give 0")
    assert_close(impl.softmax.logsumexp(x), logsumexp_ref(x), what="logsumexp")


def test_online_softmax_with_all_neg_inf_blocks(impl, device):
    # The first blocks of a row are entirely -inf: the running max is -inf
    # until a finite value arrives, and must not poison the sum with NaN.
    x = randn(3, 20, seed=53, device=device)
    x[:, :12] = NEG_INF
    x[1] = NEG_INF
    assert_close(impl.softmax.online_softmax(x, 4), softmax_ref(x), probabilities=True)


def test_naive_softmax_is_really_naive(impl):
    # The lesson's baseline must show the failure the stable version fixes.
    y = impl.softmax.naive_softmax(torch.tensor([[1000.0, 0.0]]))
    assert torch.isnan(y).any() or torch.isinf(y).any(), (
        f"naive_softmax([1000, 0]) = {y.tolist()}: exp(1000) overflows every float dtype, so the "
        "naive formula must give inf/NaN here; subtracting the max belongs in stable_softmax")


# ---------------------------------------------------------------- gradients --

@pytest.mark.parametrize("fn", ["stable_softmax", "logsumexp", "online_softmax"])
def test_gradcheck_float64(impl, fn):
    x = randn(3, 7, seed=54, dtype=torch.float64, scale=3.0, requires_grad=True)
    f = getattr(impl.softmax, fn)
    call = (lambda t: f(t, 3)) if fn == "online_softmax" else f
    assert torch.autograd.gradcheck(call, (x,), eps=1e-6, atol=1e-6), f"gradcheck of {fn} failed"


def test_gradcheck_softmax_backward(impl):
    y = torch.softmax(randn(4, 6, seed=55, dtype=torch.float64), dim=-1).requires_grad_()
    g = randn(4, 6, seed=56, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(impl.softmax.softmax_backward, (y, g), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("fn", ["stable_softmax", "logsumexp"])
def test_gradient_through_all_neg_inf_row_is_zero(impl, device, fn):
    x = randn(3, 5, seed=57, device=device, dtype=torch.float64)
    x[1] = NEG_INF
    x.requires_grad_()
    out = getattr(impl.softmax, fn)(x)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert_no_nan(grad, what=f"gradient of {fn}", hint="guard the -inf row so backward sees no 0/0 or inf*0")
    assert (grad[1] == 0).all(), f"gradient at the all -inf row should be 0, got {grad[1].tolist()}"


def test_softmax_backward_with_masked_entries_and_half_input(impl, device):
    x = randn(3, 40, seed=58, device=device, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(3, 40, dtype=torch.bool, device=device)
    mask[:, ::4] = True
    y = torch.softmax(x.masked_fill(mask, NEG_INF), dim=-1)
    grad_y = randn(3, 40, seed=59, device=device, dtype=torch.float64)
    (expected,) = torch.autograd.grad(y, x, grad_y)
    got = impl.softmax.softmax_backward(y.detach().half(), grad_y.half())
    assert got.dtype == torch.float16, f"softmax_backward returned {got.dtype} for float16 input"
    assert_close(got, expected, hint="compute in float32, return y's dtype")


# ---------------------------------------------- online = two-pass, always --

def test_online_equals_two_pass_for_every_block_size(impl, device):
    n = 29
    x = randn(4, n, seed=60, device=device, scale=6.0)
    x[3, 5:11] = NEG_INF
    two_pass = impl.softmax.stable_softmax(x)
    for block_size in range(1, n + 4):
        assert_close(impl.softmax.online_softmax(x, block_size), two_pass, probabilities=True, what=f"block_size={block_size}",
                     hint="online softmax must equal the two-pass one whether or not block_size divides the length")


@PROPERTY
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), data=st.data(),
       scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]), seed=st.integers(0, 2**16))
def test_invariants_on_random_shapes(impl, shape, data, scale, seed):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    block_size = data.draw(st.integers(1, shape[dim] + 2), label="block_size")
    x = randn(*shape, seed=seed, dtype=torch.float64, scale=scale)
    y = impl.softmax.stable_softmax(x, dim=dim)
    assert_close(y, softmax_ref(x, dim=dim), probabilities=True, what="stable_softmax")
    assert_close(y.sum(dim=dim), torch.ones(y.sum(dim=dim).shape), what="row sums", hint="rows must sum to 1")
    assert_close(impl.softmax.online_softmax(x, block_size, dim=dim), y, probabilities=True, what="online_softmax")
    shift = randn(*shape, seed=seed + 1, dtype=torch.float64).amax(dim=dim, keepdim=True) * 100
    assert_close(impl.softmax.stable_softmax(x + shift, dim=dim), y, probabilities=True, what="softmax(x + c)",
                 hint="softmax is invariant to adding a constant to each row")
    assert_close(impl.softmax.logsumexp(x + shift, dim=dim), logsumexp_ref(x, dim=dim) + shift.squeeze(dim),
                 what="logsumexp(x + c)", hint="logsumexp(x + c) = logsumexp(x) + c")


@PROPERTY
@given(n=st.integers(2, 40), cuts=st.lists(st.integers(1, 39), max_size=5), seed=st.integers(0, 2**16))
def test_merging_parts_in_any_order_equals_whole(impl, n, cuts, seed):
    x = randn(3, n, seed=seed, dtype=torch.float64, scale=10.0)
    edges = sorted({0, n, *(c for c in cuts if c < n)})
    parts = [x[:, a:b] for a, b in zip(edges, edges[1:])]
    m = torch.full((3,), NEG_INF, dtype=torch.float64)
    l = torch.zeros(3, dtype=torch.float64)
    for part in reversed(parts):  # right to left: order must not matter
        pm = part.amax(dim=-1)
        m, l = impl.softmax.merge_stats(m, l, pm, torch.exp(part - pm[:, None]).sum(dim=-1))
    assert_close(m, x.amax(dim=-1), what="merged max")
    assert_close(l, torch.exp(x - x.amax(dim=-1, keepdim=True)).sum(dim=-1), what="merged sum")


# --------------------------------------------------------------- zero sizes --

@pytest.mark.parametrize("shape,dim", [((0, 5), -1), ((3, 0), -1), ((3, 0), 0), ((2, 0, 4), 1)],
                         ids=["no_rows", "empty_rows", "dim0_of_3x0", "3d_empty_middle"])
@pytest.mark.parametrize("fn", ["naive_softmax", "stable_softmax", "online_softmax", "logsumexp"])
def test_zero_sizes(impl, fn, shape, dim):
    # Zero sizes are valid: the softmax of an empty row is empty, its logsumexp
    # is log(0) = -inf (as torch.logsumexp), and no rows give an empty result.
    x = torch.zeros(shape)
    args = (x, 3) if fn == "online_softmax" else (x,)
    got = getattr(impl.softmax, fn)(*args, dim=dim)
    expected = torch.logsumexp(x, dim=dim) if fn == "logsumexp" else torch.softmax(x, dim=dim)
    assert tuple(got.shape) == tuple(expected.shape), (
        f"{fn} of a {tuple(shape)} tensor along dim={dim} has shape {tuple(got.shape)}, expected "
        f"{tuple(expected.shape)}: a zero-length dimension gives an empty, correctly shaped result")
    assert_close(got, expected, what=fn, hint="the logsumexp of an empty row is -inf (the sum of nothing is 0)")


# --------------------------------------------------------------- bad input --

@pytest.mark.parametrize("fn", ["naive_softmax", "stable_softmax", "logsumexp"])
def test_bad_input_to_softmax_functions(impl, fn):
    f = getattr(impl.softmax, fn)
    assert_rejects(lambda: f(torch.randn(3, 4), dim=2), "dim")
    assert_rejects(lambda: f(torch.randn(3, 4), dim=-3), "dim")
    assert_rejects(lambda: f(torch.arange(6).reshape(2, 3)), "x", "dtype")
    assert_rejects(lambda: f([1.0, 2.0]), "x")


def test_bad_block_size(impl):
    x = torch.randn(3, 8)
    assert_rejects(lambda: impl.softmax.online_softmax(x, 0), "block_size")
    assert_rejects(lambda: impl.softmax.online_softmax(x, -2), "block_size")
    assert_rejects(lambda: impl.softmax.online_softmax(x, 2.5), "block_size")
    assert_rejects(lambda: impl.softmax.online_softmax(x, 4, dim=2), "dim")


def test_bad_merge_stats_shapes(impl):
    m, l = torch.zeros(3), torch.ones(3)
    names = ("m_a", "l_a", "m_b", "l_b")  # any of them names the mismatch
    assert_rejects(lambda: impl.softmax.merge_stats(m, l, torch.zeros(4), torch.ones(4)), *names)
    assert_rejects(lambda: impl.softmax.merge_stats(m, torch.ones(2), m, l), *names)


def test_bad_softmax_backward_shapes(impl):
    assert_rejects(lambda: impl.softmax.softmax_backward(torch.rand(3, 4), torch.rand(3, 5)), "grad_y", "shape")
    assert_rejects(lambda: impl.softmax.softmax_backward(torch.rand(3, 4), torch.rand(3, 4), dim=5), "dim")
