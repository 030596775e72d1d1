"""FusedLayerNormLinear requires eps > 0: a LayerNorm with eps = 0 (valid in nn.LayerNorm) cannot be built or converted with from_modules."""
MODULE = "fused_ops"
CAUGHT_BY = "advanced"


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite float, got {eps}")
