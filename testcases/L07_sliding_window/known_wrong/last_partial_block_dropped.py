"""The query loop runs over Lq // block_size full blocks: when block_size does not divide Lq, the tail stays 0."""
MODULE = "sliding_window"

_blockwise = sliding_window_attention


def sliding_window_attention(q, k, v, window, scale=None, block_size=64):
    check_qkv(q, k, v)
    check_positive_int("window", window)
    check_positive_int("block_size", block_size)
    Lq, Lk = q.shape[-2], k.shape[-2]
    full = Lq // block_size * block_size  # only the whole blocks
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    if full:
        # the first `full` queries, with the keys they can see (bottom-right: they end at key Lk - (Lq - full))
        out[:, :, :full] = _blockwise(q[:, :, :full], k[:, :, :Lk - (Lq - full)], v[:, :, :Lk - (Lq - full)],
                                      window, scale, block_size)
    return out
