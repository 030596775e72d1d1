"""The backward recomputes P = exp(S - lse) with lse = -inf for a row that sees no key: exp(-inf + inf) is NaN
(replace that lse by +inf, so P = 0 there, as FlashAttention-2's kernel stores it)."""
MODULE = "flash_attention"


def flash_attention_backward(q, k, v, out, lse, grad_out, causal=False, scale=None, block_q=64, block_k=64):
    _check_inputs(q, k, v, causal, scale, block_q, block_k)
    _check_saved(q, v, out, lse, grad_out)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    dtype = compute_dtype(q.dtype)
    qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
    o, do, lse = out.to(dtype), grad_out.to(dtype), lse.to(dtype)
    delta = (do * o).sum(dim=-1)
    dq, dk, dv = torch.zeros_like(qc), torch.zeros_like(kc), torch.zeros_like(vc)
    for q_start in range(0, Lq, block_q):
        q_end = min(q_start + block_q, Lq)
        q_i, do_i = qc[:, :, q_start:q_end], do[:, :, q_start:q_end]
        lse_i, delta_i = lse[:, :, q_start:q_end, None], delta[:, :, q_start:q_end, None]  # BUG: -inf kept
        dq_i = torch.zeros_like(q_i)
        for k_start in range(0, visible_key_end(q_end, Lq, Lk, causal), block_k):
            k_end = min(k_start + block_k, Lk)
            k_j, v_j = kc[:, :, k_start:k_end], vc[:, :, k_start:k_end]
            s = q_i @ k_j.transpose(-2, -1) * scale
            if causal:
                s = _mask_block(s, q_start, q_end, k_start, k_end, Lq, Lk)
            p = torch.exp(s - lse_i)
            dv[:, :, k_start:k_end] += p.transpose(-2, -1) @ do_i
            dp = do_i @ v_j.transpose(-2, -1)
            ds = p * (dp - delta_i) * scale
            dq_i += ds @ k_j
            dk[:, :, k_start:k_end] += ds.transpose(-2, -1) @ q_i
        dq[:, :, q_start:q_end] = dq_i
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
