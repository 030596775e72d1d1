"""Online softmax loops over whole blocks only: a partial last block is never read."""
MODULE = "softmax"


def online_softmax(x, block_size, dim=-1):
    xc = x.movedim(dim, -1)
    n = xc.shape[-1]
    m = torch.full(xc.shape[:-1], float("-inf"), dtype=xc.dtype, device=xc.device)
    l = torch.zeros(xc.shape[:-1], dtype=xc.dtype, device=xc.device)
    for start in range(0, n - n % block_size, block_size):
        block = xc[..., start:start + block_size]
        m_block = block.amax(dim=-1)
        m, l = merge_stats(m, l, m_block, torch.exp(block - m_block[..., None]).sum(dim=-1))
    return (torch.exp(xc - m[..., None]) / l[..., None]).movedim(-1, dim)
