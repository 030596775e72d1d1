"""Online softmax over the band's key blocks that forgets to rescale acc and l_i when the running max grows."""
MODULE = "sliding_window"


def sliding_window_attention(q, k, v, window, scale=None, block_size=64):
    check_qkv(q, k, v)
    check_positive_int("window", window)
    check_positive_int("block_size", block_size)
    check_scale(scale)
    B, H, Lq, D = q.shape
    Lk, Dv = k.shape[-2], v.shape[-1]
    dtype, work = q.dtype, compute_dtype(q.dtype)
    q, k, v = q.to(work), k.to(work), v.to(work)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.zeros(B, H, Lq, Dv, dtype=work, device=q.device)
    for q_start in range(0, Lq, block_size):
        q_end = min(q_start + block_size, Lq)
        first, last = q_start + Lk - Lq, q_end - 1 + Lk - Lq
        if last < 0:
            continue
        m_i = torch.full((B, H, q_end - q_start, 1), -math.inf, dtype=work, device=q.device)
        l_i = torch.zeros_like(m_i)
        acc = torch.zeros(B, H, q_end - q_start, Dv, dtype=work, device=q.device)
        for k_start in range(max(first - window + 1, 0) // block_size * block_size, last + 1, block_size):
            k_end = min(k_start + block_size, Lk)
            s = q[:, :, q_start:q_end] @ k[:, :, k_start:k_end].transpose(-2, -1) * scale
            keep = _in_window(torch.arange(first, last + 1, device=q.device),
                              torch.arange(k_start, k_end, device=q.device), window)
            s = s.masked_fill(~keep, -math.inf)
            m_new = torch.maximum(m_i, s.amax(dim=-1, keepdim=True))
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(s - m_safe)
            # missing: acc *= exp(m_i - m_new); l_i *= exp(m_i - m_new)
            l_i = l_i + p.sum(dim=-1, keepdim=True)
            acc = acc + p @ v[:, :, k_start:k_end]
            m_i = m_new
        out[:, :, q_start:q_end] = acc / torch.where(l_i > 0, l_i, torch.ones_like(l_i))
    return out.to(dtype)
