"""Adds the mask to the raw scores and scales afterwards: an additive bias gets scaled too."""
MODULE = "scaled_dot_product"

_reference_attention = scaled_dot_product_attention


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    if mask is not None and mask.dtype != torch.bool:
        s = attention_scale(q.shape[-1]) if scale is None else scale
        mask = mask * s if s > 0 else mask  # (q k^T + mask) * s == q k^T * s + mask * s
    return _reference_attention(q, k, v, mask, scale, dropout_p, training, return_weights)
