"""Top-left causal mask (tril without the Lk - Lq offset), as SDPA's is_causal: wrong whenever Lq != Lk."""
MODULE = "masks"


def causal_mask(q_len, k_len=None, device=None):
    k_len = q_len if k_len is None else k_len
    check_positive_int("q_len", q_len)
    check_positive_int("k_len", k_len)
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()
