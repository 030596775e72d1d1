"""Applies dropout whenever dropout_p > 0, ignoring training=False (F.dropout's default is training=True)."""
MODULE = "scaled_dot_product"

_reference_attention = scaled_dot_product_attention


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    return _reference_attention(q, k, v, mask, scale, dropout_p, True, return_weights)
