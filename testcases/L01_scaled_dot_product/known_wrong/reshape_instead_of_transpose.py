"""Reshapes k to (..., D, Lk) instead of transposing it: the right shape, the numbers in the wrong order."""
MODULE = "scaled_dot_product"


def attention_scores(q, k, scale=None):
    check_qk(q, k)
    check_scale(scale)
    scale = attention_scale(q.shape[-1]) if scale is None else scale
    dtype = compute_dtype(q.dtype)
    k_t = k.to(dtype).reshape(*k.shape[:-2], k.shape[-1], k.shape[-2])
    return (q.to(dtype) @ k_t) * scale
