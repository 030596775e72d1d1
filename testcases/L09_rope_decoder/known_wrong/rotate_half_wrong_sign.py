"""rotate_half returns cat(x2, -x1): the rotation turns the other way (by -angle), so q.k depends on j - p."""
MODULE = "rope"


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], -x[..., :half]), dim=-1)
