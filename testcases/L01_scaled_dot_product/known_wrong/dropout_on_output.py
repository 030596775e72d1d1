"""Applies dropout to the output instead of the attention weights."""
MODULE = "scaled_dot_product"
CAUGHT_BY = "advanced"

_reference_attention = scaled_dot_product_attention


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    out, weights = _reference_attention(q, k, v, mask, scale, 0.0, False, True)
    if training and dropout_p > 0.0:
        out = F.dropout(out, p=dropout_p)
    return (out, weights) if return_weights else out
