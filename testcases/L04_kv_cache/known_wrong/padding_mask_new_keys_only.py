"""Applies key_padding_mask to the new keys only: cached padding keys stay visible to later queries."""
MODULE = "kv_cache"

_reference_forward = MultiHeadAttention.forward


def _forward(self, x, key_padding_mask=None, cache=None, causal=True):
    if key_padding_mask is not None and cache is not None:
        past = cache.seq_len
        key_padding_mask = key_padding_mask.clone()
        key_padding_mask[:, :past] = True  # forgets which cached keys were padding
    return _reference_forward(self, x, key_padding_mask, cache, causal)


MultiHeadAttention.forward = _forward
