"""Pairs adjacent dims (2i, 2i+1) as Meta's complex RoPE does, instead of (i, i + D/2): a different model for Hugging Face's weights."""
MODULE = "rope"


def rope_cos_sin(positions, head_dim, base=10000.0, dtype=torch.float32):
    work = torch.float64 if dtype == torch.float64 else torch.float32
    theta = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=work) / head_dim))
    freqs = positions.to(work)[..., None] * theta
    emb = freqs.repeat_interleave(2, dim=-1)  # angle i on dims 2i and 2i + 1
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)  # (x0, x1) -> (-x1, x0) per adjacent pair
