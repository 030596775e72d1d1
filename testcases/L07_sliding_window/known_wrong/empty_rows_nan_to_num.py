"""Adds a 0/-inf band bias, then torch.softmax and nan_to_num: the forward of a query that sees no key is 0, but the backward goes through softmax's NaN row and the addition passes it on to q and k."""
MODULE = "sliding_window"
CAUGHT_BY = "advanced"


def sliding_window_attention(q, k, v, window, scale=None, block_size=64):
    check_qkv(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, L, D), got shape {tuple(t.shape)}")
    check_positive_int("window", window)
    check_positive_int("block_size", block_size)
    check_scale(scale)

    B, H, Lq, D = q.shape
    Lk, Dv = k.shape[-2], v.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out_dtype, work = q.dtype, compute_dtype(q.dtype)  # float32 for half inputs: scores, softmax and sums
    q, k, v = q.to(work), k.to(work), v.to(work)
    offset = Lk - Lq  # absolute position of query i is i + offset (bottom-right)

    out_blocks = []
    for q_start in range(0, Lq, block_size):  # range covers the last, partial block too
        q_end = min(q_start + block_size, Lq)
        first, last = q_start + offset, q_end - 1 + offset  # positions of the block's first and last query
        # -- the key blocks that intersect the band [first - window + 1, last] --
        k_lo = max(first - window + 1, 0) // block_size * block_size  # start of the first key block
        k_hi = min((last // block_size + 1) * block_size, Lk) if last >= 0 else 0  # end of the last one
        if k_hi <= k_lo:  # every query of the block sits before key 0: nothing to see
            out_blocks.append(q.new_zeros(B, H, q_end - q_start, Dv))
            continue
        q_blk = q[:, :, q_start:q_end]  # (B, H, bq, D)
        k_band, v_band = k[:, :, k_lo:k_hi], v[:, :, k_lo:k_hi]  # (B, H, nk, D), (B, H, nk, Dv)

        # -- compute qk on the band only --
        scores = q_blk @ k_band.transpose(-2, -1) * scale  # (B, H, bq, D) @ (B, H, D, nk) -> (B, H, bq, nk)
        keep = _in_window(torch.arange(first, last + 1, device=q.device),
                          torch.arange(k_lo, k_hi, device=q.device), window)  # (bq, nk): the exact band
        scores = scores + torch.zeros(keep.shape, dtype=scores.dtype).masked_fill(~keep, -math.inf)  # additive bias

        # -- softmax over the band; a row with no visible key gives 0, not NaN --
        p = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # empty rows: NaN -> 0 in the forward only
        out_blocks.append(p @ v_band)  # (B, H, bq, nk) @ (B, H, nk, Dv) -> (B, H, bq, Dv)

    if not out_blocks:  # Lq == 0: nothing to compute
        return q.new_zeros(B, H, 0, Dv, dtype=out_dtype)
    return torch.cat(out_blocks, dim=2).to(out_dtype)  # (B, H, Lq, Dv), in the input dtype
