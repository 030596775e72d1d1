"""bias=False is ignored: the fused modules always create (and add) a linear bias."""
MODULE = "fused_ops"
CAUGHT_BY = "advanced"


class FusedLayerNormLinear(FusedLayerNormLinear):
    def __init__(self, in_features, out_features, bias=True, eps=1e-5):
        super().__init__(in_features, out_features, True, eps)


class FusedGELULinear(FusedGELULinear):
    def __init__(self, in_features, out_features, bias=True, approximate="none"):
        super().__init__(in_features, out_features, True, approximate)
