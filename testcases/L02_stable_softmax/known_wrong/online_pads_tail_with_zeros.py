"""Pads the last, partial block with zeros: each padded entry adds exp(0 - m) to the sum."""
MODULE = "softmax"


def online_softmax(x, block_size, dim=-1):
    check_tensor("x", x)
    dim = check_dim("dim", x, dim)
    check_positive_int("block_size", block_size)
    xc = x.to(compute_dtype(x.dtype)).movedim(dim, -1)
    n = xc.shape[-1]
    padded = torch.nn.functional.pad(xc, (0, (-n) % block_size))  # zeros, not -inf
    m = torch.full(xc.shape[:-1], float("-inf"), dtype=xc.dtype, device=xc.device)
    l = torch.zeros(xc.shape[:-1], dtype=xc.dtype, device=xc.device)
    for start in range(0, padded.shape[-1], block_size):
        block = padded[..., start:start + block_size]
        m_block = block.amax(dim=-1)
        m, l = merge_stats(m, l, m_block, torch.exp(block - _finite_or_zero(m_block)[..., None]).sum(dim=-1))
    l_safe = torch.where(l == 0, torch.ones_like(l), l)
    out = torch.exp(xc - _finite_or_zero(m)[..., None]) / l_safe[..., None]
    return out.movedim(-1, dim).to(x.dtype)
