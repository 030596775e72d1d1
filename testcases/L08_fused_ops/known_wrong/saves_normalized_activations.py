"""The fused LayerNorm+Linear also saves x_hat for backward (to skip the recomputation): right numbers, no memory saved."""
MODULE = "fused_ops"


class LayerNormLinearFunction(LayerNormLinearFunction):
    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, weight, bias, eps):
        mean, rstd = layer_norm_stats(x, eps)
        x_hat = (x.to(mean.dtype) - mean) * rstd
        h = (x_hat * norm_weight + norm_bias).to(x.dtype)
        y = F.linear(h, weight, bias)
        ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, weight, x_hat)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, mean, rstd, gamma, beta, weight, x_hat = ctx.saved_tensors
        out_features, in_features = weight.shape
        h = (x_hat * gamma + beta).to(x.dtype)
        grad_y2 = grad_y.reshape(-1, out_features)
        grad_weight = grad_y2.T @ h.reshape(-1, in_features)
        grad_bias = grad_y2.sum(dim=0) if ctx.has_bias else None
        grad_h = (grad_y @ weight).to(mean.dtype)
        grad_gamma = (grad_h * x_hat).reshape(-1, in_features).sum(dim=0)
        grad_beta = grad_h.reshape(-1, in_features).sum(dim=0)
        g = grad_h * gamma
        grad_x = rstd * (g - g.mean(dim=-1, keepdim=True) - x_hat * (g * x_hat).mean(dim=-1, keepdim=True))
        return (grad_x.to(x.dtype), grad_gamma.to(gamma.dtype), grad_beta.to(beta.dtype),
                grad_weight, grad_bias, None)
