"""Treats every mask as boolean: a float 0/-inf mask becomes False/True, inverting it and dropping biases."""
MODULE = "scaled_dot_product"

_reference_attention = scaled_dot_product_attention


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    if mask is not None:
        mask = mask.bool()
    return _reference_attention(q, k, v, mask, scale, dropout_p, training, return_weights)
