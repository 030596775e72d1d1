"""The state is kept in the input's half precision: after a few hundred tokens the running sums have lost their small terms."""
MODULE = "linear_attention"
CAUGHT_BY = "advanced"


def linear_attention_chunked(q, k, v, chunk_size=64, feature_map=None, eps=1e-6):
    _check_common(q, k, v, feature_map, eps)
    check_positive_int("chunk_size", chunk_size)
    _check_self_attention(q, k)
    phi = elu_feature_map if feature_map is None else feature_map
    phi_q, phi_k = phi(q), phi(k)                # in q's dtype: no float32
    B, H, L, Df = phi_k.shape
    Dv = v.shape[-1]
    S = torch.zeros(B, H, Df, Dv, dtype=q.dtype, device=q.device)
    z = torch.zeros(B, H, Df, dtype=q.dtype, device=q.device)
    outs = []
    for start in range(0, L, chunk_size):
        end = min(start + chunk_size, L)
        fq, fk, vc = phi_q[:, :, start:end], phi_k[:, :, start:end], v[:, :, start:end]
        local = (fq @ fk.transpose(-2, -1)).tril()
        outs.append((local @ vc + fq @ S) / (local.sum(-1, keepdim=True) + fq @ z[..., None] + eps))
        S = S + fk.transpose(-2, -1) @ vc
        z = z + fk.sum(dim=2)
    return torch.cat(outs, dim=2).to(q.dtype)
