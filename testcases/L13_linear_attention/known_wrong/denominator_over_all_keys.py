"""The definition masks the numerator but normalises by the sum over ALL keys: causal outputs are shrunk by weights of future keys."""
MODULE = "linear_attention"


def linear_attention(q, k, v, causal=True, feature_map=None, eps=1e-6):
    _check_common(q, k, v, feature_map, eps)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    phi_q, phi_k = _features(q, k, feature_map)
    scores = phi_q @ phi_k.transpose(-2, -1)
    denominator = scores.sum(dim=-1, keepdim=True) + eps
    if causal:
        Lq, Lk = q.shape[-2], k.shape[-2]
        visible = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril(Lk - Lq)
        scores = scores.masked_fill(~visible, 0.0)
    return ((scores @ v.to(scores.dtype)) / denominator).to(q.dtype)
