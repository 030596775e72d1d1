"""Boolean mask read with nn.MultiheadAttention's polarity (True = blocked) instead of SDPA's."""
MODULE = "scaled_dot_product"

_reference_attention = scaled_dot_product_attention


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    if mask is not None and mask.dtype == torch.bool:
        mask = ~mask
    return _reference_attention(q, k, v, mask, scale, dropout_p, training, return_weights)
