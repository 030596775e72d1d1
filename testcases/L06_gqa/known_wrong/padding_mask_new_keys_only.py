"""With a cache, applies key_padding_mask's last L_new columns only (the new keys): cached padding becomes visible again."""
MODULE = "gqa"

_reference_forward = GroupedQueryAttention.forward


def _forward(self, hidden_states, key_padding_mask=None, cache=None, causal=True):
    if cache is None or key_padding_mask is None:
        return _reference_forward(self, hidden_states, key_padding_mask, cache, causal)
    past = cache.seq_len
    wide = torch.ones_like(key_padding_mask)
    wide[:, past:] = key_padding_mask[:, past:]  # only the new keys' padding is honoured
    return _reference_forward(self, hidden_states, wide, cache, causal)


GroupedQueryAttention.forward = _forward
