"""Right values, wrong algorithm: builds the whole (Lq, Lk) score matrix and takes its softmax, as standard attention does."""
MODULE = "flash_attention"


def flash_attention_forward(q, k, v, causal=False, scale=None, block_q=64, block_k=64):
    _check_inputs(q, k, v, causal, scale, block_q, block_k)
    Lq, D, Lk = q.shape[2], q.shape[3], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    dtype = compute_dtype(q.dtype)
    s = q.to(dtype) @ k.to(dtype).transpose(-2, -1) * scale  # BUG: (B, H, Lq, Lk)
    if causal:
        s = _mask_block(s, 0, Lq, 0, Lk, Lq, Lk)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
    return (p @ v.to(dtype)).to(q.dtype), lse
