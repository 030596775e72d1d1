"""Skips the causal mask whenever a cache is passed: right for one new token, wrong for a prefill or a chunk."""
MODULE = "kv_cache"

_reference_forward = MultiHeadAttention.forward


def _forward(self, x, key_padding_mask=None, cache=None, causal=True):
    return _reference_forward(self, x, key_padding_mask, cache, causal and cache is None)


MultiHeadAttention.forward = _forward
