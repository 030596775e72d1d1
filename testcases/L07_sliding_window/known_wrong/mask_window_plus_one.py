"""The mask keeps p - j <= W: W + 1 keys per query (the window counted without the query's own key)."""
MODULE = "sliding_window"


def sliding_window_mask(q_len, k_len, window, device=None):
    check_positive_int("q_len", q_len)
    check_positive_int("k_len", k_len)
    check_positive_int("window", window)
    distance = (torch.arange(q_len, device=device)[:, None] + (k_len - q_len)) - torch.arange(k_len, device=device)
    return (distance >= 0) & (distance <= window)
