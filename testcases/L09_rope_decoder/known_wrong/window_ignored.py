"""Ignores sliding_window in the attention mask: full causal attention over whatever the cache returns."""
MODULE = "decoder"


def sliding_window_mask(q_len, k_len, window, device=None):
    return causal_mask(q_len, k_len, device=device)
