"""The chunk loop stops at the last full chunk (range(0, L - C + 1, C)): a length that chunk_size does not divide loses its tail."""
MODULE = "linear_attention"


def linear_attention_chunked(q, k, v, chunk_size=64, feature_map=None, eps=1e-6):
    _check_common(q, k, v, feature_map, eps)
    check_positive_int("chunk_size", chunk_size)
    _check_self_attention(q, k)
    phi_q, phi_k = _features(q, k, feature_map)
    B, H, L, Df = phi_k.shape
    Dv, work = v.shape[-1], phi_k.dtype
    v = v.to(work)
    S = torch.zeros(B, H, Df, Dv, dtype=work, device=q.device)
    z = torch.zeros(B, H, Df, dtype=work, device=q.device)
    out = v.new_zeros(B, H, L, Dv)
    for start in range(0, L - chunk_size + 1, chunk_size):
        end = start + chunk_size
        fq, fk, vc = phi_q[:, :, start:end], phi_k[:, :, start:end], v[:, :, start:end]
        local = (fq @ fk.transpose(-2, -1)).tril()
        out[:, :, start:end] = (local @ vc + fq @ S) / (local.sum(-1, keepdim=True) + fq @ z[..., None] + eps)
        S = S + fk.transpose(-2, -1) @ vc
        z = z + fk.sum(dim=2)
    return out.to(q.dtype)
