"""Computes the angles p * theta in the output dtype: in float16 the angle at position 30000 is off by radians."""
MODULE = "rope"
CAUGHT_BY = "advanced"


def rope_cos_sin(positions, head_dim, base=10000.0, dtype=torch.float32):
    theta = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim))
    freqs = positions.to(dtype)[..., None] * theta.to(dtype)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()
