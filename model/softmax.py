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
    raise NotImplementedError("L02: implement naive_softmax in model/softmax.py (see tutorial/L02_stable_softmax/README.md)")


def stable_softmax(x, dim=-1):
    """softmax along `dim` computed as exp(x - max) / sum(exp(x - max)).

    Never overflows; a row that is entirely -inf gives zeros. Output in x's
    dtype (float32 arithmetic for half inputs). Differentiable.
    """
    raise NotImplementedError("L02: implement stable_softmax in model/softmax.py (see tutorial/L02_stable_softmax/README.md)")


def logsumexp(x, dim=-1):
    """log(sum(exp(x))) along `dim` (removed from the shape), computed as
    m + log(sum(exp(x - m))) with m = max. A row that is entirely -inf gives
    -inf. Output in x's dtype. Differentiable: its gradient is softmax(x).
    """
    raise NotImplementedError("L02: implement logsumexp in model/softmax.py (see tutorial/L02_stable_softmax/README.md)")


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
    raise NotImplementedError("L02: implement merge_stats in model/softmax.py (see tutorial/L02_stable_softmax/README.md)")


def online_softmax(x, block_size, dim=-1):
    """softmax along `dim`, reading x block by block (block_size elements at a
    time) and keeping only the running (max, sum) per row between blocks; a
    second sweep writes exp(x - m) / l. Equals stable_softmax for every
    block_size >= 1, including ones that do not divide the row length.
    """
    raise NotImplementedError("L02: implement online_softmax in model/softmax.py (see tutorial/L02_stable_softmax/README.md)")


def softmax_backward(y, grad_y, dim=-1):
    """Gradient of softmax given its output y = softmax(x) and dL/dy.

    The Jacobian is dy_i/dx_j = y_i (delta_ij - y_j), so
        dL/dx = y * (grad_y - sum_j(grad_y_j * y_j))
    which needs y (not x) and costs O(n), not the O(n^2) Jacobian. FlashAttention's
    backward uses the same identity (its D = rowsum(dO * O)).
    """
    raise NotImplementedError("L02: implement softmax_backward in model/softmax.py (see tutorial/L02_stable_softmax/README.md)")
