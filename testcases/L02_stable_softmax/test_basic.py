"""L02 basic suite: stable softmax, logsumexp, merging statistics, online
softmax and the softmax backward.

Run: ./course test L02    (or: pytest testcases/L02_stable_softmax -m basic)
Expected values come from torch.softmax / torch.logsumexp in float64
(coursekit.reference) and from autograd.
"""
import math

import pytest
import torch

from coursekit.reference import logsumexp_ref, softmax_ref
from coursekit.testing import assert_close, randn

NEG_INF = -math.inf


def rows_at_wildly_different_scales(device="cpu"):
    """Four rows around +1e4, 0, -1e4 and -1e3: exp of any of them overflows or
    underflows unless each row is shifted by its *own* max."""
    x = randn(4, 13, seed=30, device=device)
    return x + torch.tensor([[1e4], [0.0], [-1e4], [-1e3]], device=device)


# ------------------------------------------------------------------ softmax --

# The square case: a max taken without keepdim=True broadcasts along the wrong axis
# there without any shape error.
@pytest.mark.parametrize("shape,dim", [((7,), -1), ((4, 9), -1), ((4, 9), 0), ((2, 5, 6), 1), ((2, 3, 5), -1),
                                       ((6, 6), -1)],
                         ids=["1d", "2d_last", "2d_dim0", "3d_middle", "3d_last", "square"])
def test_stable_softmax_matches_torch(impl, device, shape, dim):
    x = randn(*shape, seed=31, device=device, scale=3.0)
    assert_close(impl.softmax.stable_softmax(x, dim=dim), softmax_ref(x, dim=dim), probabilities=True,
                 hint=f"softmax along dim={dim}: take the max and the sum over that dim, with keepdim=True")


def test_naive_softmax_matches_torch_on_moderate_values(impl, device):
    x = randn(5, 11, seed=32, device=device)
    assert_close(impl.softmax.naive_softmax(x), softmax_ref(x), probabilities=True, hint="naive: exp(x) / exp(x).sum(dim, keepdim=True)")


def test_stable_softmax_does_not_overflow(impl, device):
    x = rows_at_wildly_different_scales(device)
    y = impl.softmax.stable_softmax(x)
    assert torch.isfinite(y).all(), (
        "non-finite probabilities: exp overflows past 88.7 in float32. Subtract each row's max first")
    assert_close(y, softmax_ref(x), probabilities=True, hint=(
        "shift each row by its own max (amax over dim, keepdim=True); a single global max "
        "makes rows far below it underflow to 0/0"))


def test_fully_masked_row_gives_zeros(impl, device):
    x = randn(3, 6, seed=33, device=device)
    x[1] = NEG_INF
    x[2, :4] = NEG_INF
    y = impl.softmax.stable_softmax(x)
    assert not torch.isnan(y).any(), (
        "NaN: a row that is entirely -inf gives max = -inf and -inf - (-inf) = NaN. "
        "The convention is softmax = 0 for such a row")
    assert_close(y, softmax_ref(x), probabilities=True)


# ---------------------------------------------------------------- logsumexp --

def test_logsumexp_matches_torch(impl, device):
    x = torch.cat([randn(3, 10, seed=34, device=device), rows_at_wildly_different_scales(device)[:, :10]])
    assert_close(impl.softmax.logsumexp(x), logsumexp_ref(x), hint=(
        "logsumexp = m + log(sum(exp(x - m))): did you forget to add the max back?"))


def test_logsumexp_of_all_neg_inf_row(impl, device):
    x = randn(2, 5, seed=35, device=device)
    x[0] = NEG_INF
    assert_close(impl.softmax.logsumexp(x), logsumexp_ref(x),
                 hint="logsumexp of an all -inf row is -inf (log 0), never NaN")


# -------------------------------------------------------------- merge_stats --

def stats(x):
    """(max, sum exp(x - max)) of each row, in float64 from primitives."""
    x = x.double()
    m = x.amax(dim=-1)
    return m, torch.exp(x - m[:, None]).sum(dim=-1)


@pytest.mark.parametrize("larger", ["a", "b", "mixed"])
def test_merge_stats_of_two_parts_equals_stats_of_whole(impl, device, larger):
    a = randn(6, 5, seed=36, device=device, scale=2.0)
    b = randn(6, 7, seed=37, device=device, scale=2.0)
    if larger == "a":
        a = a + 5.0
    elif larger == "b":
        b = b + 5.0
    else:
        a[:3] += 5.0
        b[3:] += 5.0
    m_a, l_a = stats(a)
    m_b, l_b = stats(b)
    m, l = impl.softmax.merge_stats(m_a, l_a, m_b, l_b)
    m_want, l_want = stats(torch.cat([a, b], dim=-1))
    assert_close(m, m_want, what="merged max")
    assert_close(l, l_want, what="merged sum", hint=(
        "both sums must be rescaled to the new max: l = l_a*exp(m_a - m) + l_b*exp(m_b - m)"))


def test_merge_stats_of_empty_parts(impl, device):
    empty_m = torch.full((3,), NEG_INF, dtype=torch.float64, device=device)
    empty_l = torch.zeros(3, dtype=torch.float64, device=device)
    m, l = impl.softmax.merge_stats(empty_m, empty_l, empty_m, empty_l)
    assert torch.isneginf(m).all() and (l == 0).all(), (
        f"merging two empty parts should give (-inf, 0), got m={m.tolist()}, l={l.tolist()}: "
        "exp(-inf - (-inf)) is NaN, guard it")
    m_b, l_b = stats(randn(3, 4, seed=38, device=device))
    m, l = impl.softmax.merge_stats(empty_m, empty_l, m_b, l_b)
    assert_close(m, m_b, what="max after merging an empty part")
    assert_close(l, l_b, what="sum after merging an empty part", hint="an empty part (m=-inf, l=0) changes nothing")


# ----------------------------------------------------------- online softmax --

@pytest.mark.parametrize("block_size", [1, 4, 5, 16, 37, 64])
def test_online_softmax_matches_torch(impl, device, block_size):
    # Rows that increase make the running max change at every block, so a
    # running sum that is not rescaled shows up at once; 37 is prime, so most
    # block sizes leave a partial last block.
    ramp = torch.linspace(-20, 20, 37, device=device)
    x = torch.stack([ramp, ramp.flip(0), randn(37, seed=39, device=device, scale=5.0)])
    assert_close(impl.softmax.online_softmax(x, block_size), softmax_ref(x), probabilities=True, hint=(
        f"block_size={block_size} on rows of 37: rescale the running sum when the max grows "
        "(l *= exp(m_old - m_new)), and do not drop the last, partial block"))


def test_online_softmax_along_dim0(impl, device):
    x = randn(23, 4, seed=40, device=device, scale=4.0)
    assert_close(impl.softmax.online_softmax(x, 5, dim=0), softmax_ref(x, dim=0), probabilities=True, hint="blocks run along `dim`")


# ---------------------------------------------------------------- backward --

@pytest.mark.parametrize("dim", [-1, 0])
def test_softmax_backward_matches_autograd(impl, device, dim):
    x = randn(6, 9, seed=41, device=device, scale=2.0, dtype=torch.float64, requires_grad=True)
    grad_y = randn(6, 9, seed=42, device=device, dtype=torch.float64)
    y = torch.softmax(x, dim=dim)
    (expected,) = torch.autograd.grad(y, x, grad_y)
    got = impl.softmax.softmax_backward(y.detach(), grad_y, dim=dim)
    assert_close(got, expected, what="grad_x", hint=(
        "dL/dx = y * (grad_y - sum(grad_y * y, dim, keepdim=True)): the second term is the "
        "softmax Jacobian's off-diagonal part"))
