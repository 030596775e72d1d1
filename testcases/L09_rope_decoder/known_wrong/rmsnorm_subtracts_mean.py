"""RMSNorm subtracts the mean first (LayerNorm without its bias): not what Llama's weights were trained with."""
MODULE = "rope"


def _forward(self, x):
    work = x.to(compute_dtype(x.dtype))
    work = work - work.mean(dim=-1, keepdim=True)
    normed = work * torch.rsqrt(work.pow(2).mean(dim=-1, keepdim=True) + self.eps)
    return self.weight * normed.to(x.dtype)


RMSNorm.forward = _forward
