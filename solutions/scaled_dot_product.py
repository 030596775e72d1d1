"""L01 — Scaled dot-product attention.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V        (Vaswani et al., 2017)

Shapes (course-wide letters): q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv).
Any number of leading dims works, as long as q, k and v agree on them.

Conventions (tutorial/CONVENTIONS.md): a boolean mask is True where a query may attend; an
additive mask holds 0 (keep) or -inf (drop); masks broadcast to (..., Lq, Lk).
A query whose keys are all masked gets output 0 and weights 0, never NaN.
Half-precision inputs are computed in float32 and returned in their own dtype.
"""
import math

import torch
import torch.nn.functional as F

from ._checks import (check_flag, check_mask, check_positive_int, check_probability, check_qk, check_qkv,
                      check_scale, compute_dtype)


def attention_scale(head_dim):
    """The factor 1/sqrt(d_k) applied to the scores.

    For q, k with independent unit-variance entries, q·k = sum_i q_i k_i has
    variance d_k; scaling by 1/sqrt(d_k) brings it back to 1, so the softmax
    neither saturates nor flattens as the head grows.

    head_dim: a positive int. Returns a Python float.
    """
    ### BEGIN SOLUTION
    check_positive_int("head_dim", head_dim)
    return 1.0 / math.sqrt(head_dim)
    ### END SOLUTION


def attention_scores(q, k, scale=None):
    """Scaled scores S = q k^T * scale.

    q: (..., Lq, D), k: (..., Lk, D) -> (..., Lq, Lk).
    scale: defaults to attention_scale(D).
    Half-precision inputs give float32 scores (a dot product of float16 values
    overflows 65504 long before the softmax would care); other dtypes keep theirs.
    """
    ### BEGIN SOLUTION
    check_qk(q, k)
    check_scale(scale)
    scale = attention_scale(q.shape[-1]) if scale is None else scale
    dtype = compute_dtype(q.dtype)
    scores = q.to(dtype) @ k.to(dtype).transpose(-2, -1)  # (..., Lq, D) @ (..., D, Lk) -> (..., Lq, Lk)
    return scores * scale
    ### END SOLUTION


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0,
                                 training=False, return_weights=False):
    """softmax(q k^T * scale + mask) v.

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) -> out (..., Lq, Dv) in q's dtype.
    mask: None, bool (True = attend) or float (added to the scores), broadcasting
        to (..., Lq, Lk). Fully masked rows give zero output and zero weights.
    dropout_p: probability of dropping an attention weight, applied only when
        training=True (kept weights are scaled by 1 / (1 - dropout_p)).
    return_weights: also return the attention weights (..., Lq, Lk), after
        dropout, in q's dtype.
    training and return_weights are bools. Zero sizes work: Lq = 0 gives an
    empty output, Lk = 0 a query that sees no key (output 0).
    """
    ### BEGIN SOLUTION
    check_qkv(q, k, v)
    check_probability("dropout_p", dropout_p)
    check_flag("training", training)
    check_flag("return_weights", return_weights)
    scores = attention_scores(q, k, scale)  # (..., Lq, Lk), float32 for half inputs
    if mask is not None:
        check_mask(mask, scores.shape, scores.device)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, -math.inf)
        else:
            scores = scores + mask.to(scores.dtype)

    # A row with every key masked is all -inf: softmax would give 0/0 = NaN.
    # Give such rows finite scores, then zero their weights afterwards.
    empty_row = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (..., Lq, 1)
    weights = torch.softmax(scores.masked_fill(empty_row, 0.0), dim=-1)
    weights = weights.masked_fill(empty_row, 0.0)
    if training and dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)

    out = weights @ v.to(weights.dtype)  # (..., Lq, Lk) @ (..., Lk, Dv) -> (..., Lq, Dv)
    out = out.to(q.dtype)
    return (out, weights.to(q.dtype)) if return_weights else out
    ### END SOLUTION
