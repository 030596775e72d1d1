"""The decay multiplies the state after the new token is added, S = decay (S + phi(k) v^T): the current token is down-weighted too."""
MODULE = "linear_attention"
CAUGHT_BY = "advanced"


def decayed_linear_attention_recurrent(q, k, v, decay, state=None, feature_map=None, eps=1e-6):
    _check_common(q, k, v, feature_map, eps)
    _check_self_attention(q, k)
    H = q.shape[1]
    phi_q, phi_k = _features(q, k, feature_map)
    B, _, L, Df = phi_k.shape
    Dv, work = v.shape[-1], phi_k.dtype
    S, z = _check_state(state, (B, H, Df, Dv), work, q.device)
    if isinstance(decay, (int, float)) and not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    if isinstance(decay, torch.Tensor) and decay.shape != (H,):
        raise ValueError(f"decay must be a float or a tensor (H,), got shape {tuple(decay.shape)}")
    gamma = torch.as_tensor(decay, dtype=work, device=q.device).reshape(-1)
    gamma_s, gamma_z = gamma.view(1, -1, 1, 1), gamma.view(1, -1, 1)
    v = v.to(work)
    outs = []
    for t in range(L):
        S = gamma_s * (S + phi_k[:, :, t, :, None] * v[:, :, t, None, :])
        z = gamma_z * (z + phi_k[:, :, t])
        outs.append(torch.einsum("bhd,bhde->bhe", phi_q[:, :, t], S) / ((phi_q[:, :, t] * z).sum(-1, keepdim=True) + eps))
    return torch.stack(outs, dim=2).to(q.dtype), (S, z)
