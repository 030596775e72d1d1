"""Bottom-right offset clamped at 0 (max(0, Lk - Lq)): right for a chunk against a longer cache, top-left when Lq > Lk."""
MODULE = "masks"


def causal_mask(q_len, k_len=None, device=None):
    k_len = q_len if k_len is None else k_len
    check_positive_int("q_len", q_len)
    check_positive_int("k_len", k_len)
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=max(0, k_len - q_len))
