"""The fused LayerNorm divides the squared deviations by n - 1 (torch.var's default) instead of n."""
MODULE = "fused_ops"


def layer_norm_stats(x, eps):
    xc = x.to(compute_dtype(x.dtype))
    mean = xc.mean(dim=-1, keepdim=True)
    var = xc.var(dim=-1, keepdim=True)  # unbiased: / (n - 1)
    return mean, torch.rsqrt(var + eps)
