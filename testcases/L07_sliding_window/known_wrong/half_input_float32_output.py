"""Half-precision inputs are computed in float32 (right) but the output is returned in float32 too, not cast back to the input dtype."""
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
        scores = scores.masked_fill(~keep, -math.inf)

        # -- softmax over the band; a row with no visible key gives 0, not NaN --
        row_max = scores.amax(dim=-1, keepdim=True)  # (B, H, bq, 1)
        row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
        p = torch.exp(scores - row_max).masked_fill(~keep, 0.0)  # (B, H, bq, nk)
        row_sum = p.sum(dim=-1, keepdim=True)  # (B, H, bq, 1)
        row_sum = torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))
        out_blocks.append((p @ v_band) / row_sum)  # (B, H, bq, nk) @ (B, H, nk, Dv) -> (B, H, bq, Dv)

    if not out_blocks:  # Lq == 0: nothing to compute
        return q.new_zeros(B, H, 0, Dv, dtype=out_dtype)
    return torch.cat(out_blocks, dim=2)  # (B, H, Lq, Dv), still in float32 for half inputs
