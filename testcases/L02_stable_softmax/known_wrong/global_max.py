"""Subtracts the max of the whole tensor, not of each row: rows far below it underflow to 0/0."""
MODULE = "softmax"


def stable_softmax(x, dim=-1):
    e = torch.exp(x - x.max())
    return e / e.sum(dim=dim, keepdim=True)
