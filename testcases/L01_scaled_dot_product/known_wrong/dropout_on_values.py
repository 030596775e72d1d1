"""Applies dropout to v instead of the attention weights."""
MODULE = "scaled_dot_product"
CAUGHT_BY = "advanced"

_reference_attention = scaled_dot_product_attention


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    if training and dropout_p > 0.0:
        v = F.dropout(v, p=dropout_p)
    return _reference_attention(q, k, v, mask, scale, 0.0, False, return_weights)
