"""The fused GELU+Linear saves gelu(a) as well as a: the backward is right, the memory the same as unfused."""
MODULE = "fused_ops"


class GELULinearFunction(GELULinearFunction):
    @staticmethod
    def forward(ctx, a, weight, bias, approximate):
        h = gelu(a, approximate)
        ctx.save_for_backward(a, weight, h)
        ctx.approximate, ctx.has_bias = approximate, bias is not None
        return F.linear(h, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        a, weight, h = ctx.saved_tensors
        out_features, in_features = weight.shape
        grad_y2 = grad_y.reshape(-1, out_features)
        grad_weight = grad_y2.T @ h.reshape(-1, in_features)
        grad_bias = grad_y2.sum(dim=0) if ctx.has_bias else None
        grad_a = (grad_y @ weight).to(compute_dtype(a.dtype)) * gelu_derivative(a, ctx.approximate)
        return grad_a.to(a.dtype), grad_weight, grad_bias, None
