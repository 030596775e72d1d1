"""Builds the full (Lq, Lk) scores and applies sliding_window_mask: right values, O(L^2) work and memory."""
MODULE = "sliding_window"


def sliding_window_attention(q, k, v, window, scale=None, block_size=64):
    check_qkv(q, k, v)
    check_positive_int("window", window)
    check_positive_int("block_size", block_size)
    check_scale(scale)
    dtype = q.dtype
    q, k, v = (t.to(compute_dtype(dtype)) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # (B, H, Lq, Lk): the whole matrix
    keep = sliding_window_mask(q.shape[-2], k.shape[-2], window, device=q.device)
    scores = scores.masked_fill(~keep, -math.inf)
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return (weights @ v).to(dtype)
