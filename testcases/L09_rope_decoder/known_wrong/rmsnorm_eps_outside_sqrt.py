"""x / (sqrt(mean(x^2)) + eps) instead of x / sqrt(mean(x^2) + eps)."""
MODULE = "rope"


def _forward(self, x):
    work = x.to(compute_dtype(x.dtype))
    normed = work / (work.pow(2).mean(dim=-1, keepdim=True).sqrt() + self.eps)
    return self.weight * normed.to(x.dtype)


RMSNorm.forward = _forward
