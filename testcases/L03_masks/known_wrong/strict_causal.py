"""Strict causal mask (j < i): the diagonal is masked off, so each token cannot see itself and query 0 sees nothing."""
MODULE = "masks"


def causal_mask(q_len, k_len=None, device=None):
    k_len = q_len if k_len is None else k_len
    check_positive_int("q_len", q_len)
    check_positive_int("k_len", k_len)
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len - 1)
