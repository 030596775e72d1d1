"""Computes in float32 for half inputs but forgets to cast the output back: float16 in, float32 out."""
MODULE = "scaled_dot_product"

_reference_attention = scaled_dot_product_attention


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    dtype = compute_dtype(q.dtype)
    result = _reference_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, scale, dropout_p, training,
                                  return_weights)
    return result
