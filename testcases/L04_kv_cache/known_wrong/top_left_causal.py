"""Top-left causal mask (tril with diagonal 0, as SDPA's is_causal): a decoding query sees only the first keys."""
MODULE = "kv_cache"


def causal_mask(q_len, k_len=None, device=None):
    k_len = q_len if k_len is None else k_len
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()
