"""L02 — Stable and online softmax.

    softmax(x)_i = exp(x_i) / sum_j exp(x_j)
                 = exp(x_i - m) / sum_j exp(x_j - m)      for any m; take m = max_j x_j

With m = max, every exponent is <= 0, so nothing overflows and the largest term
is exactly 1, so the sum is >= 1 and never underflows to 0. The online version
(Milakov & Gimelshein, 2018) finds m and the sum l = sum_j exp(x_j - m) in ONE
pass over blocks of x, rescaling the running sum whenever the running max grows;
FlashAttention is this idea applied to the rows of Q K^T.

Conventions (tutorial/CONVENTIONS.md): a row that is entirely -inf has softmax 0 and
logsumexp -inf, never NaN. Half-precision inputs are computed in float32 and
returned in their own dtype.
"""
import torch

from ._checks import check_dim, check_positive_int, check_same_shape, check_tensor, compute_dtype


def naive_softmax(x, dim=-1):
    """exp(x) / sum(exp(x)) along `dim`, the textbook formula, evaluated in x's
    own dtype with no max subtraction. It overflows once x exceeds
    log(max finite value): 11.1 in float16, 88.7 in float32, 709.8 in float64.
    This is the baseline the lesson breaks; do not make it stable.
    """
    ### BEGIN SOLUTION
    check_tensor("x", x)
    dim = check_dim("dim", x, dim)
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)
    ### END SOLUTION


### BEGIN SOLUTION
def _finite_or_zero(m):
    """Replace infinite maxima by 0, so an all -inf row never computes -inf - (-inf)."""
    return torch.where(torch.isinf(m), torch.zeros_like(m), m)


def _safe_max(x, dim):
    """Row max (kept dim), infinities replaced by 0, detached: subtracting a
    constant does not change softmax, so no gradient needs to flow through it.
    An empty row (x.shape[dim] == 0) has no max (amax refuses it): 0 serves."""
    if x.shape[dim] == 0:
        return x.new_zeros(x.shape[:dim] + (1,) + x.shape[dim + 1:]).detach()
    return _finite_or_zero(x.amax(dim=dim, keepdim=True).detach())
### END SOLUTION


def stable_softmax(x, dim=-1):
    """softmax along `dim` computed as exp(x - max) / sum(exp(x - max)).

    Never overflows; a row that is entirely -inf gives zeros. Output in x's
    dtype (float32 arithmetic for half inputs). Differentiable.
    """
    ### BEGIN SOLUTION
    check_tensor("x", x)
    dim = check_dim("dim", x, dim)
    xc = x.to(compute_dtype(x.dtype))
    e = torch.exp(xc - _safe_max(xc, dim))
    total = e.sum(dim=dim, keepdim=True)
    total = torch.where(total == 0, torch.ones_like(total), total)  # all -inf row: 0 / 1 = 0
    return (e / total).to(x.dtype)
    ### END SOLUTION


def logsumexp(x, dim=-1):
    """log(sum(exp(x))) along `dim` (removed from the shape), computed as
    m + log(sum(exp(x - m))) with m = max. A row that is entirely -inf gives
    -inf. Output in x's dtype. Differentiable: its gradient is softmax(x).
    """
    ### BEGIN SOLUTION
    check_tensor("x", x)
    dim = check_dim("dim", x, dim)
    xc = x.to(compute_dtype(x.dtype))
    m = _safe_max(xc, dim)
    total = torch.exp(xc - m).sum(dim=dim, keepdim=True)
    empty = total == 0
    lse = m + torch.log(torch.where(empty, torch.ones_like(total), total))
    lse = torch.where(empty, torch.full_like(lse, float("-inf")), lse)
    return lse.squeeze(dim).to(x.dtype)
    ### END SOLUTION


def merge_stats(m_a, l_a, m_b, l_b):
    """Combine the softmax statistics of two disjoint parts a and b of a row.

    Each part is summarised by its max m and its sum l = sum exp(x - m).
    The whole row has
        m = max(m_a, m_b)
        l = l_a * exp(m_a - m) + l_b * exp(m_b - m)
    (each sum is rescaled to the new, common max). Parts that are empty or all
    -inf have m = -inf and l = 0; merging two of them gives (-inf, 0), not NaN.
    All four tensors share one shape; returns (m, l) of that shape.
    """
    ### BEGIN SOLUTION
    for name, t in (("m_a", m_a), ("l_a", l_a), ("m_b", m_b), ("l_b", l_b)):
        check_tensor(name, t, min_dim=0)
    check_same_shape(m_a=m_a, l_a=l_a, m_b=m_b, l_b=l_b)
    m = torch.maximum(m_a, m_b)
    m_safe = _finite_or_zero(m)
    l = l_a * torch.exp(m_a - m_safe) + l_b * torch.exp(m_b - m_safe)
    return m, l
    ### END SOLUTION


def online_softmax(x, block_size, dim=-1):
    """softmax along `dim`, reading x block by block (block_size elements at a
    time) and keeping only the running (max, sum) per row between blocks; a
    second sweep writes exp(x - m) / l. Equals stable_softmax for every
    block_size >= 1, including ones that do not divide the row length.
    """
    ### BEGIN SOLUTION
    check_tensor("x", x)
    dim = check_dim("dim", x, dim)
    check_positive_int("block_size", block_size)
    xc = x.to(compute_dtype(x.dtype)).movedim(dim, -1)  # (..., N): rows along the last dim
    rows = xc.shape[:-1]
    m = torch.full(rows, float("-inf"), dtype=xc.dtype, device=xc.device)  # running max
    l = torch.zeros(rows, dtype=xc.dtype, device=xc.device)  # running sum of exp(x - m)

    # Pass 1: one read of x, block by block. A block's own stats are merged into
    # the running ones; exp(m_old - m_new) rescales the old sum to the new max.
    for start in range(0, xc.shape[-1], block_size):
        block = xc[..., start:start + block_size]  # (..., <= block_size)
        m_block = block.amax(dim=-1)  # -inf if the block is all -inf
        l_block = torch.exp(block - _finite_or_zero(m_block)[..., None]).sum(dim=-1)
        m, l = merge_stats(m, l, m_block, l_block)

    # Pass 2: normalise with the final statistics.
    l_safe = torch.where(l == 0, torch.ones_like(l), l)  # all -inf row: 0 / 1 = 0
    out = torch.exp(xc - _finite_or_zero(m)[..., None]) / l_safe[..., None]
    return out.movedim(-1, dim).to(x.dtype)
    ### END SOLUTION


def softmax_backward(y, grad_y, dim=-1):
    """Gradient of softmax given its output y = softmax(x) and dL/dy.

    The Jacobian is dy_i/dx_j = y_i (delta_ij - y_j), so
        dL/dx = y * (grad_y - sum_j(grad_y_j * y_j))
    which needs y (not x) and costs O(n), not the O(n^2) Jacobian. FlashAttention's
    backward uses the same identity (its D = rowsum(dO * O)).
    """
    ### BEGIN SOLUTION
    check_tensor("y", y)
    check_tensor("grad_y", grad_y)
    check_same_shape(y=y, grad_y=grad_y)
    dim = check_dim("dim", y, dim)
    dtype = compute_dtype(y.dtype)
    yc, gc = y.to(dtype), grad_y.to(dtype)
    dot = (gc * yc).sum(dim=dim, keepdim=True)
    return (yc * (gc - dot)).to(y.dtype)
    ### END SOLUTION
