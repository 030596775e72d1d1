"""Transposes the wrong dims of k (k.transpose(-1, -3)): shape errors, or wrong numbers when the sizes happen to fit."""
MODULE = "scaled_dot_product"


def attention_scores(q, k, scale=None):
    check_qk(q, k)
    check_scale(scale)
    scale = attention_scale(q.shape[-1]) if scale is None else scale
    dtype = compute_dtype(q.dtype)
    k_t = k.to(dtype).transpose(-1, -3) if k.dim() >= 3 else k.to(dtype).transpose(-2, -1)
    return (q.to(dtype) @ k_t) * scale
