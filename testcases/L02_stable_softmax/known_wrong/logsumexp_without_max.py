"""logsumexp returns log(sum(exp(x - m))) and forgets to add m back."""
MODULE = "softmax"


def logsumexp(x, dim=-1):
    m = x.amax(dim=dim, keepdim=True)
    return torch.log(torch.exp(x - m).sum(dim=dim))
