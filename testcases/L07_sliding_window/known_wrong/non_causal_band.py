"""A symmetric band |p - j| < W (Longformer's two-sided local window) instead of the causal 0 <= p - j < W."""
MODULE = "sliding_window"


def _in_window(query_position, key_position, window):
    distance = query_position[:, None] - key_position[None, :]
    return distance.abs() < window
