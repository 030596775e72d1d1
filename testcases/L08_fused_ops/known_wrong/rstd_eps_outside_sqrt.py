"""eps added after the square root: rstd = 1 / (sqrt(var) + eps) instead of 1 / sqrt(var + eps)."""
MODULE = "fused_ops"


def layer_norm_stats(x, eps):
    xc = x.to(compute_dtype(x.dtype))
    mean = xc.mean(dim=-1, keepdim=True)
    var = (xc - mean).square().mean(dim=-1, keepdim=True)
    return mean, 1.0 / (var.sqrt() + eps)
