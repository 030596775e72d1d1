"""Sliding window off by one: each query sees W - 1 keys (p - j < W - 1) instead of W, its own key included."""
MODULE = "decoder"

_reference_band = sliding_window_mask


def sliding_window_mask(q_len, k_len, window, device=None):
    return _reference_band(q_len, k_len, max(window - 1, 1), device=device)
