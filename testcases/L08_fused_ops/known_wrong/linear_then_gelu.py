"""FusedGELULinear applies the linear layer first and GELU to its output (Linear -> GELU), instead of GELU -> Linear."""
MODULE = "fused_ops"


class FusedGELULinear(FusedGELULinear):
    def forward(self, a):
        _check_input(a, self.in_features, self.weight, name="a")
        return F.gelu(F.linear(a, self.weight, self.bias), approximate=self.approximate)
