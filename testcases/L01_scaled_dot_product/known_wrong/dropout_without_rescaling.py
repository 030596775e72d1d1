"""Drops attention weights but does not divide the survivors by 1 - p: outputs shrink by 1 - p in training."""
MODULE = "scaled_dot_product"
CAUGHT_BY = "advanced"

_reference_attention = scaled_dot_product_attention


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    out, weights = _reference_attention(q, k, v, mask, scale, 0.0, False, True)
    if training and dropout_p > 0.0:
        weights = weights * (torch.rand_like(weights) >= dropout_p)
        out = (weights.to(compute_dtype(q.dtype)) @ v.to(compute_dtype(q.dtype))).to(q.dtype)
    return (out, weights) if return_weights else out
