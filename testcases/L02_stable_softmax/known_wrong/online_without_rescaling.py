"""Online softmax that updates the running max but never rescales the running sum to it."""
MODULE = "softmax"


def online_softmax(x, block_size, dim=-1):
    xc = x.movedim(dim, -1)
    m = torch.full(xc.shape[:-1], float("-inf"), dtype=xc.dtype, device=xc.device)
    l = torch.zeros(xc.shape[:-1], dtype=xc.dtype, device=xc.device)
    for start in range(0, xc.shape[-1], block_size):
        block = xc[..., start:start + block_size]
        m = torch.maximum(m, block.amax(dim=-1))
        l = l + torch.exp(block - m[..., None]).sum(dim=-1)
    return (torch.exp(xc - m[..., None]) / l[..., None]).movedim(-1, dim)
