"""layer_norm_stats computes the mean and variance in the input's dtype: for float16/bfloat16 rows with a large mean they are rounded to a few digits, instead of float32 statistics (the course's precision rule)."""
MODULE = "fused_ops"
CAUGHT_BY = "advanced"


def layer_norm_stats(x, eps):
    mean = x.mean(dim=-1, keepdim=True)                        # in x's dtype: float16 keeps ~3 digits
    var = (x - mean).square().mean(dim=-1, keepdim=True)
    return mean, torch.rsqrt(var + eps)
