"""Backward flattens the recomputed activation with .view(-1, in_features), which fails for a non-contiguous input (use reshape)."""
MODULE = "fused_ops"
CAUGHT_BY = "advanced"


class GELULinearFunction(GELULinearFunction):
    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        a, weight = ctx.saved_tensors
        out_features, in_features = weight.shape
        h = gelu(a, ctx.approximate)
        grad_y2 = grad_y.view(-1, out_features)
        grad_weight = grad_y2.T @ h.view(-1, in_features)
        grad_bias = grad_y2.sum(dim=0) if ctx.has_bias else None
        grad_a = (grad_y @ weight).to(compute_dtype(a.dtype)) * gelu_derivative(a, ctx.approximate)
        return grad_a.to(a.dtype), grad_weight, grad_bias, None


class LayerNormLinearFunction(LayerNormLinearFunction):
    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, mean, rstd, gamma, beta, weight = ctx.saved_tensors
        out_features, in_features = weight.shape
        x_hat = (x.to(mean.dtype) - mean) * rstd
        h = (x_hat * gamma + beta).to(x.dtype)
        grad_y2 = grad_y.view(-1, out_features)
        grad_weight = grad_y2.T @ h.view(-1, in_features)
        grad_bias = grad_y2.sum(dim=0) if ctx.has_bias else None
        grad_h = (grad_y @ weight).to(mean.dtype)
        grad_gamma = (grad_h * x_hat).view(-1, in_features).sum(dim=0)
        grad_beta = grad_h.view(-1, in_features).sum(dim=0)
        g = grad_h * gamma
        grad_x = rstd * (g - g.mean(dim=-1, keepdim=True) - x_hat * (g * x_hat).mean(dim=-1, keepdim=True))
        return (grad_x.to(x.dtype), grad_gamma.to(gamma.dtype), grad_beta.to(beta.dtype),
                grad_weight, grad_bias, None)
