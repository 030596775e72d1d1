"""Takes the max over dim=0 whatever `dim` is: entries of one row are shifted by different amounts."""
MODULE = "softmax"


def stable_softmax(x, dim=-1):
    check_tensor("x", x)
    dim = check_dim("dim", x, dim)
    xc = x.to(compute_dtype(x.dtype))
    m = _finite_or_zero(xc.amax(dim=0, keepdim=True).detach())
    e = torch.exp(xc - m)
    total = e.sum(dim=dim, keepdim=True)
    return (e / torch.where(total == 0, torch.ones_like(total), total)).to(x.dtype)
