"""Aligns causality top-left (query i sees keys j <= i, like SDPA's is_causal): right only when Lq == Lk."""
MODULE = "flash_attention"


def visible_key_end(q_end, q_len, k_len, causal):
    return min(k_len, q_end) if causal else k_len  # BUG: no Lk - Lq offset


def _mask_block(s, q_start, q_end, k_start, k_end, q_len, k_len):
    rows = torch.arange(q_start, q_end, device=s.device)[:, None]
    cols = torch.arange(k_start, k_end, device=s.device)[None, :]
    return s.masked_fill(cols > rows, -math.inf)  # BUG: no Lk - Lq offset
