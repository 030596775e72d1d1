"""triton_layer_norm requires eps > 0: eps = 0, which F.layer_norm accepts, is rejected."""
MODULE = "fused_ops_triton"
CAUGHT_BY = "advanced"

_right_layer_norm = triton_layer_norm


def triton_layer_norm(x, weight, bias, eps=1e-5, block_size=None):
    if isinstance(eps, numbers.Real) and not isinstance(eps, bool) and eps <= 0:
        raise ValueError(f"eps must be a positive float, got {eps}")
    return _right_layer_norm(x, weight, bias, eps, block_size)
