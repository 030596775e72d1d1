"""Uses tril() (top-left alignment, SDPA's is_causal) for the causal mask: right without a cache, wrong while decoding."""
MODULE = "gqa"


def causal_mask(q_len, k_len=None, device=None):
    k_len = q_len if k_len is None else k_len
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()
