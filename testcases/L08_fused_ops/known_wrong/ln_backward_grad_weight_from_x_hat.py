"""Backward recomputes x_hat but forgets LayerNorm's affine when forming grad_W: grad_W = grad_y^T x_hat instead of grad_y^T (x_hat * gamma + beta)."""
MODULE = "fused_ops"


class LayerNormLinearFunction(LayerNormLinearFunction):
    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, mean, rstd, gamma, beta, weight = ctx.saved_tensors
        out_features, in_features = weight.shape
        x_hat = (x.to(mean.dtype) - mean) * rstd
        grad_y2 = grad_y.reshape(-1, out_features)
        grad_weight = grad_y2.T @ x_hat.to(x.dtype).reshape(-1, in_features)
        grad_bias = grad_y2.sum(dim=0) if ctx.has_bias else None
        grad_h = (grad_y @ weight).to(mean.dtype)
        grad_gamma = (grad_h * x_hat).reshape(-1, in_features).sum(dim=0)
        grad_beta = grad_h.reshape(-1, in_features).sum(dim=0)
        g = grad_h * gamma
        grad_x = rstd * (g - g.mean(dim=-1, keepdim=True) - x_hat * (g * x_hat).mean(dim=-1, keepdim=True))
        return (grad_x.to(x.dtype), grad_gamma.to(gamma.dtype), grad_beta.to(beta.dtype),
                grad_weight, grad_bias, None)
