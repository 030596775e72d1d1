"""The chunked form starts every chunk from an empty state: each query sees only the keys of its own chunk."""
MODULE = "linear_attention"


def linear_attention_chunked(q, k, v, chunk_size=64, feature_map=None, eps=1e-6):
    _check_common(q, k, v, feature_map, eps)
    check_positive_int("chunk_size", chunk_size)
    _check_self_attention(q, k)
    phi_q, phi_k = _features(q, k, feature_map)
    v = v.to(phi_k.dtype)
    outs = []
    for start in range(0, q.shape[-2], chunk_size):
        end = min(start + chunk_size, q.shape[-2])
        fq, fk, vc = phi_q[:, :, start:end], phi_k[:, :, start:end], v[:, :, start:end]
        local = (fq @ fk.transpose(-2, -1)).tril()
        outs.append((local @ vc) / (local.sum(-1, keepdim=True) + eps))
    return torch.cat(outs, dim=2).to(q.dtype)
