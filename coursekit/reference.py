"""Independent references, built from torch primitives and evaluated in float64.

Tests compare implementations against these, never against solutions/.
Each follows the course conventions (COURSE.md): boolean masks are True = may
attend, additive masks are 0 / -inf, and a fully masked row gives zeros.
"""
import math

import torch


def softmax_ref(x, dim=-1):
    """torch.softmax in float64; a row that is entirely -inf gives zeros, not NaN."""
    x = x.detach().to(torch.float64)
    empty_row = torch.isneginf(x).all(dim=dim, keepdim=True)
    return torch.softmax(x, dim=dim).masked_fill(empty_row, 0.0)


def logsumexp_ref(x, dim=-1):
    """torch.logsumexp in float64 (-inf for a row that is entirely -inf)."""
    return torch.logsumexp(x.detach().to(torch.float64), dim=dim)


def additive_mask(mask):
    """Boolean (True = keep) -> float64 0 / -inf; an additive mask passes through."""
    if mask.dtype == torch.bool:
        zeros = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
        return zeros.masked_fill(~mask, -math.inf)
    return mask.detach().to(torch.float64)


def attention_ref(q, k, v, mask=None, scale=None):
    """softmax(q k^T * scale + mask) v in float64, with einsum.

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) -> out (..., Lq, Dv),
    weights (..., Lq, Lk).
    """
    q, k, v = (t.detach().to(torch.float64) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("...qd,...kd->...qk", q, k) * scale
    if mask is not None:
        scores = scores + additive_mask(mask).to(scores.device)
    weights = softmax_ref(scores, dim=-1)
    return torch.einsum("...qk,...kd->...qd", weights, v), weights


def causal_mask_ref(q_len, k_len=None, device="cpu"):
    """Bottom-right causal mask (True = may attend): query i sits at absolute
    position i + k_len - q_len and sees keys j <= that position."""
    k_len = q_len if k_len is None else k_len
    ones = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    return ones.tril(diagonal=k_len - q_len)


def padding_mask_ref(lengths, max_len=None, device="cpu"):
    """(batch, max_len) bool, True for the first lengths[b] positions of row b."""
    lengths = torch.as_tensor(lengths, device=device)
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=device)[None, :] < lengths[:, None]
