"""The diagonal tile's mask built from the tile's own row and column indices (0..block-1) instead of the
absolute positions q_start + r and k_start + c: right only where the tile sits on the main diagonal's start."""
MODULE = "flash_attention"


def _mask_block(s, q_start, q_end, k_start, k_end, q_len, k_len):
    offset = k_len - q_len
    if k_end - 1 <= q_start + offset:
        return s
    rows = torch.arange(q_end - q_start, device=s.device)[:, None]  # BUG: local r, not q_start + r
    cols = torch.arange(k_end - k_start, device=s.device)[None, :]  # BUG: local c, not k_start + c
    return s.masked_fill(cols > rows + offset, -math.inf)
