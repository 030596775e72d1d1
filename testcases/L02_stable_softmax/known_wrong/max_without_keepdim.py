"""Row max without keepdim=True: x - m broadcasts m along the last axis (a shape error, or silently wrong for square inputs)."""
MODULE = "softmax"


def stable_softmax(x, dim=-1):
    check_tensor("x", x)
    dim = check_dim("dim", x, dim)
    xc = x.to(compute_dtype(x.dtype))
    m = _finite_or_zero(xc.amax(dim=dim).detach())  # the reduced dim is gone
    e = torch.exp(xc - m)
    total = e.sum(dim=dim, keepdim=True)
    return (e / torch.where(total == 0, torch.ones_like(total), total)).to(x.dtype)
