"""theta_i = base^(-i/D) instead of base^(-2i/D): the frequencies fall only half as far."""
MODULE = "rope"


def rope_cos_sin(positions, head_dim, base=10000.0, dtype=torch.float32):
    work = torch.float64 if dtype == torch.float64 else torch.float32
    theta = 1.0 / (base ** (torch.arange(head_dim // 2, device=positions.device, dtype=work) / head_dim))
    freqs = positions.to(work)[..., None] * theta
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)
