"""Scores are raw dot products: the 1/sqrt(d) scale is computed but never applied."""
MODULE = "scaled_dot_product"


def attention_scores(q, k, scale=None):
    check_qk(q, k)
    dtype = compute_dtype(q.dtype)
    return q.to(dtype) @ k.to(dtype).transpose(-2, -1)
