"""from_modules copies the parameters but not the LayerNorm's eps: the fused module uses the default 1e-5 whatever eps the LayerNorm was built with."""
MODULE = "fused_ops"


def from_modules(cls, layer_norm, linear):
    if not isinstance(layer_norm, nn.LayerNorm):
        raise TypeError(f"layer_norm must be an nn.LayerNorm, got {type(layer_norm).__name__}")
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    if tuple(layer_norm.normalized_shape) != (linear.in_features,):
        raise ValueError(f"layer_norm normalizes over {tuple(layer_norm.normalized_shape)}, but linear has "
                         f"in_features={linear.in_features}: expected normalized_shape ({linear.in_features},)")
    weight = linear.weight
    fused = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)  # default eps
    fused = fused.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():  # copy_, not assignment: the fused module keeps its own tensors
        fused.weight.copy_(weight)
        if linear.bias is not None:
            fused.bias.copy_(linear.bias)
        if layer_norm.weight is not None:
            fused.norm_weight.copy_(layer_norm.weight)
        if layer_norm.bias is not None:
            fused.norm_bias.copy_(layer_norm.bias)
    return fused


FusedLayerNormLinear.from_modules = classmethod(from_modules)
