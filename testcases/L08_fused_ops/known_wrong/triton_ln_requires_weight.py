"""triton_layer_norm checks weight and bias as tensors without allowing None: a layer norm without affine (weight=None means ones, bias=None zeros, as F.layer_norm) is rejected."""
MODULE = "fused_ops_triton"

_right_layer_norm = triton_layer_norm


def triton_layer_norm(x, weight, bias, eps=1e-5, block_size=None):
    for name, p in (("weight", weight), ("bias", bias)):
        _check_triton_input(p, name)  # a TypeError for None
    return _right_layer_norm(x, weight, bias, eps, block_size)
