"""key_padding_mask read with nn.MultiheadAttention's polarity (True = padding) instead of True = real token."""
MODULE = "kv_cache"

_reference_forward = MultiHeadAttention.forward


def _inverted_forward(self, x, key_padding_mask=None, cache=None, causal=True):
    if key_padding_mask is not None:
        key_padding_mask = ~key_padding_mask
    return _reference_forward(self, x, key_padding_mask, cache, causal)


MultiHeadAttention.forward = _inverted_forward
