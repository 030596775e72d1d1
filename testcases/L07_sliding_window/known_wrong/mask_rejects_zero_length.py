"""sliding_window_mask checks q_len and k_len with check_positive_int: a zero-length query or key sequence is an error instead of an empty mask."""
MODULE = "sliding_window"
CAUGHT_BY = "advanced"


def sliding_window_mask(q_len, k_len, window, device=None):
    check_positive_int("q_len", q_len)
    check_positive_int("k_len", k_len)
    check_positive_int("window", window)
    query_position = torch.arange(q_len, device=device) + (k_len - q_len)
    key_position = torch.arange(k_len, device=device)
    return _in_window(query_position, key_position, window)
