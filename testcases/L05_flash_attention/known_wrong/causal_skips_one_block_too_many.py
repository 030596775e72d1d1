"""Stops the causal key loop at floor((q_end + Lk - Lq) / block_k) blocks: the diagonal block is skipped unless the bound is aligned."""
MODULE = "flash_attention"


def flash_attention_forward(q, k, v, causal=False, scale=None, block_q=64, block_k=64):
    _check_inputs(q, k, v, causal, scale, block_q, block_k)
    B, H, Lq, D = q.shape
    Lk, Dv = k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    out_dtype, dtype = q.dtype, compute_dtype(q.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    out = torch.zeros(B, H, Lq, Dv, dtype=dtype)
    lse = torch.full((B, H, Lq), -math.inf, dtype=dtype)
    for q_start in range(0, Lq, block_q):
        q_end = min(q_start + block_q, Lq)
        q_i = q[:, :, q_start:q_end]
        m_i = torch.full((B, H, q_end - q_start), -math.inf, dtype=dtype)
        l_i = torch.zeros(B, H, q_end - q_start, dtype=dtype)
        acc = torch.zeros(B, H, q_end - q_start, Dv, dtype=dtype)
        stop = visible_key_end(q_end, Lq, Lk, causal)
        if causal:
            stop = stop // block_k * block_k  # BUG: whole blocks only (floor), not ceil
        for k_start in range(0, stop, block_k):
            k_end = min(k_start + block_k, Lk)
            s = q_i @ k[:, :, k_start:k_end].transpose(-2, -1) * scale
            if causal:
                s = _mask_block(s, q_start, q_end, k_start, k_end, Lq, Lk)
            m_new = torch.maximum(m_i, s.amax(dim=-1))
            m_safe = _finite_or_zero(m_new)
            p = torch.exp(s - m_safe[..., None])
            alpha = torch.exp(m_i - m_safe)
            l_i = alpha * l_i + p.sum(dim=-1)
            acc = alpha[..., None] * acc + p @ v[:, :, k_start:k_end]
            m_i = m_new
        empty = l_i == 0
        l_safe = torch.where(empty, torch.ones_like(l_i), l_i)
        out[:, :, q_start:q_end] = acc / l_safe[..., None]
        lse[:, :, q_start:q_end] = torch.where(empty, torch.full_like(m_i, -math.inf), m_i + torch.log(l_safe))
    return out.to(out_dtype), lse
