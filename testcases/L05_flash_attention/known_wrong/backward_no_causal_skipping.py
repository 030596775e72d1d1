"""The forward skips the key blocks above the diagonal but the backward visits (and masks) all of them: right gradients, twice the work."""
MODULE = "flash_attention"
CAUGHT_BY = "advanced"


def flash_attention_backward(q, k, v, out, lse, grad_out, causal=False, scale=None, block_q=64, block_k=64):
    _check_inputs(q, k, v, causal, scale, block_q, block_k)
    _check_saved(q, v, out, lse, grad_out)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    dtype = compute_dtype(q.dtype)
    qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
    do, lse = grad_out.to(dtype), lse.to(dtype)
    lse_safe = torch.where(torch.isinf(lse), torch.full_like(lse, math.inf), lse)
    dq, dk, dv = torch.zeros_like(qc), torch.zeros_like(kc), torch.zeros_like(vc)
    for q_start in range(0, Lq, block_q):
        q_end = min(q_start + block_q, Lq)
        q_i, do_i = qc[:, :, q_start:q_end], do[:, :, q_start:q_end]
        for k_start in range(0, Lk, block_k):  # BUG: no causal skipping
            k_end = min(k_start + block_k, Lk)
            k_j, v_j = kc[:, :, k_start:k_end], vc[:, :, k_start:k_end]
            s = q_i @ k_j.transpose(-2, -1) * scale
            if causal:
                s = _mask_block(s, q_start, q_end, k_start, k_end, Lq, Lk)
            p = torch.exp(s - lse_safe[:, :, q_start:q_end, None])
            dv[:, :, k_start:k_end] += p.transpose(-2, -1) @ do_i
            delta = (do_i * out[:, :, q_start:q_end].to(dtype)).sum(dim=-1, keepdim=True)
            ds = p * (do_i @ v_j.transpose(-2, -1) - delta) * scale
            dq[:, :, q_start:q_end] += ds @ k_j
            dk[:, :, k_start:k_end] += ds.transpose(-2, -1) @ q_i
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
