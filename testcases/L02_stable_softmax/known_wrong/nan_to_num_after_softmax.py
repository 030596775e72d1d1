"""Lets the all -inf row become NaN, then cleans it with nan_to_num: the forward is right, the gradient is NaN."""
MODULE = "softmax"
CAUGHT_BY = "advanced"


def stable_softmax(x, dim=-1):
    check_tensor("x", x)
    dim = check_dim("dim", x, dim)
    xc = x.to(compute_dtype(x.dtype))
    e = torch.exp(xc - xc.amax(dim=dim, keepdim=True).detach())
    return torch.nan_to_num(e / e.sum(dim=dim, keepdim=True), nan=0.0).to(x.dtype)
