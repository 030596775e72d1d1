"""No guard for an all -inf row: max is -inf, and -inf - (-inf) is NaN."""
MODULE = "softmax"


def stable_softmax(x, dim=-1):
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)
