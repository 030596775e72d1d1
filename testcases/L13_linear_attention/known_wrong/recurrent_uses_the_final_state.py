"""The recurrent form builds the whole state first and reads it for every token: a non-causal state in causal mode, so the future leaks into the past."""
MODULE = "linear_attention"


def linear_attention_recurrent(q, k, v, state=None, feature_map=None, eps=1e-6):
    _check_common(q, k, v, feature_map, eps)
    _check_self_attention(q, k)
    phi_q, phi_k = _features(q, k, feature_map)
    B, H, L, Df = phi_k.shape
    Dv, work = v.shape[-1], phi_k.dtype
    S, z = _check_state(state, (B, H, Df, Dv), work, q.device)
    v = v.to(work)
    S = S + torch.einsum("bhld,bhle->bhde", phi_k, v)       # every token at once
    z = z + phi_k.sum(dim=2)
    out = torch.einsum("bhld,bhde->bhle", phi_q, S) / (torch.einsum("bhld,bhd->bhl", phi_q, z)[..., None] + eps)
    return out.to(q.dtype), (S, z)
