"""RMSNorm squares and averages in the input's dtype: float16 squares above 65504 overflow to inf."""
MODULE = "rope"


def _forward(self, x):
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps))


RMSNorm.forward = _forward
