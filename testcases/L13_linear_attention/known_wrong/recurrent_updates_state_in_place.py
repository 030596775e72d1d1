"""The recurrent step adds into the caller's state tensors in place (S += ...): the state the caller passed is changed behind its back."""
MODULE = "linear_attention"


def linear_attention_recurrent(q, k, v, state=None, feature_map=None, eps=1e-6):
    _check_common(q, k, v, feature_map, eps)
    _check_self_attention(q, k)
    phi_q, phi_k = _features(q, k, feature_map)
    B, H, L, Df = phi_k.shape
    Dv, work = v.shape[-1], phi_k.dtype
    S, z = _check_state(state, (B, H, Df, Dv), work, q.device)
    v = v.to(work)
    outs = []
    for t in range(L):
        S += phi_k[:, :, t, :, None] * v[:, :, t, None, :]
        z += phi_k[:, :, t]
        numerator = torch.einsum("bhd,bhde->bhe", phi_q[:, :, t], S)
        denominator = (phi_q[:, :, t] * z).sum(-1, keepdim=True) + eps
        outs.append(numerator / denominator)
    out = torch.stack(outs, dim=2) if outs else v.new_zeros(B, H, 0, Dv)
    return out.to(q.dtype), (S, z)
