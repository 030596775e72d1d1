"""Adds a detached copy of a float mask: the forward is right, but no gradient reaches a mask that requires grad."""
MODULE = "scaled_dot_product"
CAUGHT_BY = "advanced"

_reference_attention = scaled_dot_product_attention


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.detach().clone()
    return _reference_attention(q, k, v, mask, scale, dropout_p, training, return_weights)
