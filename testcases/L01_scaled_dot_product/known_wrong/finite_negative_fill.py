"""Blocks keys with torch.finfo(dtype).min instead of -inf: no NaN, but a fully masked row averages values it may not see."""
MODULE = "scaled_dot_product"

_reference_attention = scaled_dot_product_attention


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    return _reference_attention(q, k, v, mask, scale, dropout_p, training, return_weights)
