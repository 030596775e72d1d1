"""Masks the diagonal block with j < i + Lk - Lq instead of j <= i + Lk - Lq: every query is hidden from its own key."""
MODULE = "flash_attention"


def _mask_block(s, q_start, q_end, k_start, k_end, q_len, k_len):
    offset = k_len - q_len
    if k_end - 1 < q_start + offset:
        return s
    rows = torch.arange(q_start, q_end, device=s.device)[:, None]
    cols = torch.arange(k_start, k_end, device=s.device)[None, :]
    return s.masked_fill(cols >= rows + offset, -math.inf)  # BUG: >= hides the diagonal
