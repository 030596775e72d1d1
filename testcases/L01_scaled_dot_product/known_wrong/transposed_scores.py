"""Scores computed as k @ q^T, then transposed back the wrong way round: rows are keys, not queries."""
MODULE = "scaled_dot_product"


def attention_scores(q, k, scale=None):
    check_qk(q, k)
    scale = attention_scale(q.shape[-1]) if scale is None else scale
    dtype = compute_dtype(q.dtype)
    scores = (k.to(dtype) @ q.to(dtype).transpose(-2, -1)) * scale  # (..., Lk, Lq)
    return scores.reshape(*scores.shape[:-2], scores.shape[-1], scores.shape[-2])
