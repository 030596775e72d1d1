"""`scale = scale or attention_scale(D)`: an explicit scale=0.0 is falsy and silently becomes the default."""
MODULE = "scaled_dot_product"


def attention_scores(q, k, scale=None):
    check_qk(q, k)
    check_scale(scale)
    scale = scale or attention_scale(q.shape[-1])
    dtype = compute_dtype(q.dtype)
    return (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * scale
