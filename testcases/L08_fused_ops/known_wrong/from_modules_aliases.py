"""from_modules shares the original modules' parameters instead of copying them: later changes to either leak into the other."""
MODULE = "fused_ops"


class FusedLayerNormLinear(FusedLayerNormLinear):
    @classmethod
    def from_modules(cls, layer_norm, linear):
        fused = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, eps=layer_norm.eps)
        fused.weight, fused.bias = linear.weight, linear.bias
        fused.norm_weight, fused.norm_bias = layer_norm.weight, layer_norm.bias
        return fused


class FusedGELULinear(FusedGELULinear):
    @classmethod
    def from_modules(cls, linear, *, approximate="none"):
        fused = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, approximate=approximate)
        fused.weight, fused.bias = linear.weight, linear.bias
        return fused
