"""logsumexp that lets an all -inf row become NaN and then replaces the NaN by -inf: the gradient is still NaN."""
MODULE = "softmax"
CAUGHT_BY = "advanced"


def logsumexp(x, dim=-1):
    check_tensor("x", x)
    dim = check_dim("dim", x, dim)
    xc = x.to(compute_dtype(x.dtype))
    m = xc.amax(dim=dim, keepdim=True).detach()
    lse = (m + torch.log(torch.exp(xc - m).sum(dim=dim, keepdim=True))).squeeze(dim)
    return torch.nan_to_num(lse, nan=float("-inf")).to(x.dtype)
