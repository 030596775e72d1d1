"""The mask puts query i at position i (top-left) instead of i + Lk - Lq: right for Lq == Lk only."""
MODULE = "sliding_window"


def sliding_window_mask(q_len, k_len, window, device=None):
    check_positive_int("q_len", q_len)
    check_positive_int("k_len", k_len)
    check_positive_int("window", window)
    return _in_window(torch.arange(q_len, device=device), torch.arange(k_len, device=device), window)
