"""L08 — Fused ops with recomputation (the CPU path, pure PyTorch).

A transformer block is a chain of small ops, and autograd keeps, for every op,
the tensors its backward needs. Two neighbours in every MLP block:

    LayerNorm -> Linear:   h = LN(x) = x_hat * gamma + beta,  x_hat = (x - mean) * rstd,
                           y = h W^T + b
    GELU -> Linear:        h = gelu(a),  y = h W^T + b

Run as separate modules, LayerNorm saves x, mean and rstd, and the Linear saves
its own input h: a second (N, in) activation that is a cheap elementwise
function of what LayerNorm already saved. GELU saves a; the Linear after it
saves gelu(a), again a cheap function of a. Here each pair is ONE
torch.autograd.Function that saves only what its backward cannot cheaply
recompute, and recomputes the rest in backward:

    LayerNorm+Linear saves  x, mean, rstd  (+ parameters)   not x_hat, not h
    GELU+Linear saves       a              (+ parameters)   not gelu(a)

N = number of tokens (every leading dim flattened), in = in_features. Each
fused pair saves N * in elements fewer than the unfused pair (exactly: torch's
LayerNorm saves (x, mean, rstd, gamma, beta), Linear saves (input, W), GELU saves
(input)); the price is one elementwise recomputation in backward. Korthikanti et
al. (2022) call this selective activation recomputation.

Parameters (the names are part of this module's documented API):
    FusedLayerNormLinear: norm_weight (in,) = gamma, norm_bias (in,) = beta,
                          weight (out, in), bias (out,) or None.
    FusedGELULinear:      weight (out, in), bias (out,) or None.
from_modules COPIES the given modules' parameters: the fused module owns its
own tensors, so training it leaves the originals untouched, and changing the
originals afterwards does not change it.

Precision: for float16/bfloat16 inputs the statistics (mean, rstd) and GELU
are computed in float32 and the activations returned in the input dtype, as
nn.LayerNorm and nn.GELU do; mean and rstd are then saved in float32.

Exercises: layer_norm_stats, gelu, gelu_derivative, the forward and backward of
LayerNormLinearFunction and GELULinearFunction, and the two modules' __init__,
from_modules and forward.
"""
import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._checks import check_positive_int, check_tensor, compute_dtype

APPROXIMATIONS = ("none", "tanh")
SQRT_1_OVER_2 = 1.0 / math.sqrt(2.0)        # erf(a / sqrt 2): Phi(a) = (1 + erf(a / sqrt 2)) / 2
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)   # 0.79788...: the tanh approximation's scale
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # the normal pdf's constant: phi(a) = exp(-a^2 / 2) / sqrt(2 pi)
GELU_TANH_COEFF = 0.044715                  # Hendrycks & Gimpel's cubic coefficient


# --------------------------------------------------------------------------
# The pieces: LayerNorm statistics, GELU and its derivative
# --------------------------------------------------------------------------

def layer_norm_stats(x, eps):
    """Mean and reciprocal standard deviation of x over its last dim.

        mean = (1/n) sum_j x_j
        var  = (1/n) sum_j (x_j - mean)^2        the BIASED variance (divide by n, as nn.LayerNorm)
        rstd = 1 / sqrt(var + eps)               eps inside the square root

    x (..., n) -> (mean, rstd), each (..., 1), in compute_dtype(x.dtype)
    (float32 for half inputs, x's dtype otherwise).
    """
    ### BEGIN SOLUTION
    xc = x.to(compute_dtype(x.dtype))
    mean = xc.mean(dim=-1, keepdim=True)                                # (..., 1)
    var = (xc - mean).square().mean(dim=-1, keepdim=True)               # (..., 1), biased: / n
    return mean, torch.rsqrt(var + eps)
    ### END SOLUTION


def gelu(a, approximate="none"):
    """GELU(a) = a * Phi(a), Phi the standard normal CDF, elementwise.

    approximate="none":  0.5 * a * (1 + erf(a / sqrt(2)))
    approximate="tanh":  0.5 * a * (1 + tanh(sqrt(2/pi) * (a + 0.044715 a^3)))
    Computed in compute_dtype(a.dtype), returned in a.dtype (as nn.GELU).
    """
    ### BEGIN SOLUTION
    ac = a.to(compute_dtype(a.dtype))
    if approximate == "tanh":
        u = SQRT_2_OVER_PI * (ac + GELU_TANH_COEFF * ac ** 3)
        out = 0.5 * ac * (1.0 + torch.tanh(u))
    else:
        out = 0.5 * ac * (1.0 + torch.erf(ac * SQRT_1_OVER_2))
    return out.to(a.dtype)
    ### END SOLUTION


def gelu_derivative(a, approximate="none"):
    """d GELU(a) / da, elementwise, in compute_dtype(a.dtype).

    approximate="none":  Phi(a) + a * phi(a),   phi(a) = exp(-a^2 / 2) / sqrt(2 pi)
    approximate="tanh":  with u = sqrt(2/pi) (a + 0.044715 a^3) and t = tanh(u),
                         0.5 (1 + t) + 0.5 a (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 a^2)
    """
    ### BEGIN SOLUTION
    ac = a.to(compute_dtype(a.dtype))
    if approximate == "tanh":
        t = torch.tanh(SQRT_2_OVER_PI * (ac + GELU_TANH_COEFF * ac ** 3))
        du_da = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_COEFF * ac ** 2)
        return 0.5 * (1.0 + t) + 0.5 * ac * (1.0 - t * t) * du_da
    cdf = 0.5 * (1.0 + torch.erf(ac * SQRT_1_OVER_2))                   # Phi(a)
    pdf = INV_SQRT_2PI * torch.exp(-0.5 * ac * ac)                      # phi(a)
    return cdf + ac * pdf
    ### END SOLUTION


# --------------------------------------------------------------------------
# LayerNorm -> Linear as one autograd.Function
# --------------------------------------------------------------------------

class LayerNormLinearFunction(torch.autograd.Function):
    """y = LN(x) W^T + b with LN(x) = (x - mean) * rstd * gamma + beta.

    apply(x, norm_weight, norm_bias, weight, bias, eps) -> y
      x (..., in); norm_weight, norm_bias (in,); weight (out, in); bias (out,) or None.
    """

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, weight, bias, eps):
        """Compute y and save ONLY x, mean, rstd and the parameters
        (ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, weight)).
        x_hat and h are temporaries: they are freed when forward returns."""
        ### BEGIN SOLUTION
        mean, rstd = layer_norm_stats(x, eps)                           # (..., 1) each
        x_hat = (x.to(mean.dtype) - mean) * rstd                        # (..., in), a temporary
        h = (x_hat * norm_weight + norm_bias).to(x.dtype)               # the LayerNorm output, a temporary
        y = F.linear(h, weight, bias)                                   # (..., in) @ (in, out) -> (..., out)
        ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, weight)
        ctx.has_bias = bias is not None
        return y
        ### END SOLUTION

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        """Gradients for (x, norm_weight, norm_bias, weight, bias, eps).

        Recompute x_hat = (x - mean) * rstd and h = x_hat * gamma + beta, then
            grad_W     = sum over tokens of grad_y^T h       (out, in)
            grad_b     = sum over tokens of grad_y           (out,)
            grad_h     = grad_y W                            (..., in)
            grad_gamma = sum over tokens of grad_h * x_hat   (in,)
            grad_beta  = sum over tokens of grad_h           (in,)
            g          = grad_h * gamma                      dL/dx_hat
            grad_x     = rstd * (g - mean_j(g) - x_hat * mean_j(g * x_hat))
        mean_j = mean over the last dim. Return None for eps (and for bias
        when there is none)."""
        ### BEGIN SOLUTION
        x, mean, rstd, gamma, beta, weight = ctx.saved_tensors
        out_features, in_features = weight.shape
        # -- recompute: one elementwise pass over x instead of two saved (N, in) tensors --
        x_hat = (x.to(mean.dtype) - mean) * rstd                        # (..., in)
        h = (x_hat * gamma + beta).to(x.dtype)                          # (..., in)
        grad_y2 = grad_y.reshape(-1, out_features)                      # (N, out)

        grad_weight = grad_y2.T @ h.reshape(-1, in_features)            # (out, N) @ (N, in) -> (out, in)
        grad_bias = grad_y2.sum(dim=0) if ctx.has_bias else None        # (out,)
        grad_h = (grad_y @ weight).to(mean.dtype)                       # (..., out) @ (out, in) -> (..., in)
        grad_gamma = (grad_h * x_hat).reshape(-1, in_features).sum(dim=0)
        grad_beta = grad_h.reshape(-1, in_features).sum(dim=0)

        # -- LayerNorm backward: x_hat depends on x directly AND through mean and rstd --
        g = grad_h * gamma                                              # dL/dx_hat, (..., in)
        grad_x = rstd * (g - g.mean(dim=-1, keepdim=True)               # the mean's share of every x_j
                         - x_hat * (g * x_hat).mean(dim=-1, keepdim=True))  # the variance's share
        return (grad_x.to(x.dtype), grad_gamma.to(gamma.dtype), grad_beta.to(beta.dtype),
                grad_weight, grad_bias, None)
        ### END SOLUTION


# --------------------------------------------------------------------------
# GELU -> Linear as one autograd.Function
# --------------------------------------------------------------------------

class GELULinearFunction(torch.autograd.Function):
    """y = gelu(a) W^T + b.

    apply(a, weight, bias, approximate) -> y
      a (..., in) the pre-activation; weight (out, in); bias (out,) or None;
      approximate "none" (erf) or "tanh".
    """

    @staticmethod
    def forward(ctx, a, weight, bias, approximate):
        """Compute y and save ONLY a and weight (not gelu(a))."""
        ### BEGIN SOLUTION
        h = gelu(a, approximate)                                        # (..., in), a temporary
        y = F.linear(h, weight, bias)                                   # (..., in) @ (in, out) -> (..., out)
        ctx.save_for_backward(a, weight)
        ctx.approximate, ctx.has_bias = approximate, bias is not None
        return y
        ### END SOLUTION

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        """Recompute h = gelu(a); then
            grad_W = sum over tokens of grad_y^T h,  grad_b = sum of grad_y,
            grad_a = (grad_y W) * gelu'(a).
        Return gradients for (a, weight, bias, approximate)."""
        ### BEGIN SOLUTION
        a, weight = ctx.saved_tensors
        out_features, in_features = weight.shape
        h = gelu(a, ctx.approximate)                                    # recomputed, (..., in)
        grad_y2 = grad_y.reshape(-1, out_features)                      # (N, out)
        grad_weight = grad_y2.T @ h.reshape(-1, in_features)            # (out, N) @ (N, in) -> (out, in)
        grad_bias = grad_y2.sum(dim=0) if ctx.has_bias else None
        grad_h = grad_y @ weight                                        # (..., out) @ (out, in) -> (..., in)
        grad_a = grad_h.to(compute_dtype(a.dtype)) * gelu_derivative(a, ctx.approximate)
        return grad_a.to(a.dtype), grad_weight, grad_bias, None
        ### END SOLUTION


# --------------------------------------------------------------------------
# The modules
# --------------------------------------------------------------------------

def _reset_linear(weight, bias):
    """nn.Linear's initialisation: U(-1/sqrt(in), 1/sqrt(in)) for W and b."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1.0 / math.sqrt(weight.shape[1])
        nn.init.uniform_(bias, -bound, bound)


class FusedLayerNormLinear(nn.Module):
    """nn.LayerNorm(in_features, eps) followed by nn.Linear(in_features, out_features, bias).

    FusedLayerNormLinear(in_features, out_features, bias=True, eps=1e-5)

    __init__ checks in_features and out_features (positive ints), bias (a bool)
    and eps (a finite float >= 0; 0 is allowed, as in nn.LayerNorm, and a
    negative eps is a ValueError), stores them as attributes, and creates
        norm_weight (in,) = 1, norm_bias (in,) = 0        the LayerNorm's gamma, beta
        weight (out, in), bias (out,) or None             initialised as nn.Linear
    forward(x): x (..., in_features) -> (..., out_features), through
    LayerNormLinearFunction: the same numbers and gradients as the unfused pair,
    N * in_features fewer elements saved for backward.
    """

    def __init__(self, in_features, out_features, bias=True, eps=1e-5):
        super().__init__()
        ### BEGIN SOLUTION
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        _check_bias_flag(bias)
        _check_eps(eps)
        self.in_features, self.out_features, self.eps = in_features, out_features, float(eps)
        self.norm_weight = nn.Parameter(torch.ones(in_features))
        self.norm_bias = nn.Parameter(torch.zeros(in_features))
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        _reset_linear(self.weight, self.bias)
        ### END SOLUTION

    @classmethod
    def from_modules(cls, layer_norm, linear):
        """A fused module with COPIES of layer_norm's and linear's parameters,
        in their dtype and on their device.

        layer_norm: nn.LayerNorm over one dim of size linear.in_features
        (TypeError if not an nn.LayerNorm, ValueError naming layer_norm if its
        normalized_shape is not (linear.in_features,)); linear: nn.Linear
        (TypeError otherwise). A LayerNorm without elementwise affine (or
        without a bias) gets gamma = 1 (beta = 0), which is what it computes.
        """
        ### BEGIN SOLUTION
        if not isinstance(layer_norm, nn.LayerNorm):
            raise TypeError(f"layer_norm must be an nn.LayerNorm, got {type(layer_norm).__name__}")
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        if tuple(layer_norm.normalized_shape) != (linear.in_features,):
            raise ValueError(f"layer_norm normalizes over {tuple(layer_norm.normalized_shape)}, but linear has "
                             f"in_features={linear.in_features}: expected normalized_shape ({linear.in_features},)")
        weight = linear.weight
        fused = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, eps=layer_norm.eps)
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
        ### END SOLUTION

    def forward(self, x):
        """x (..., in_features) -> (..., out_features) in x's dtype.

        x must be a float tensor with the parameters' dtype (TypeError naming x)
        and device, and last dim in_features (ValueError naming x)."""
        ### BEGIN SOLUTION
        _check_input(x, self.in_features, self.weight)
        return LayerNormLinearFunction.apply(x, self.norm_weight, self.norm_bias, self.weight, self.bias, self.eps)
        ### END SOLUTION

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, eps={self.eps}")


class FusedGELULinear(nn.Module):
    """nn.GELU(approximate) followed by nn.Linear(in_features, out_features, bias).

    FusedGELULinear(in_features, out_features, bias=True, approximate="none")

    __init__ checks the sizes (positive ints), bias (a bool) and approximate
    ("none" or "tanh", ValueError naming approximate), stores them, and creates
    weight (out, in) and bias (out,) or None, initialised as nn.Linear.
    forward(a): the pre-activation a (..., in_features) -> (..., out_features)
    through GELULinearFunction.
    """

    def __init__(self, in_features, out_features, bias=True, approximate="none"):
        super().__init__()
        ### BEGIN SOLUTION
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        _check_bias_flag(bias)
        _check_approximate(approximate)
        self.in_features, self.out_features, self.approximate = in_features, out_features, approximate
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        _reset_linear(self.weight, self.bias)
        ### END SOLUTION

    @classmethod
    def from_modules(cls, linear, *, approximate="none"):
        """A fused module computing linear(GELU(a, approximate)), with COPIES
        of linear's parameters in their dtype and on their device. linear must
        be an nn.Linear (TypeError naming linear)."""
        ### BEGIN SOLUTION
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        fused = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, approximate=approximate)
        fused = fused.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(linear.weight)
            if linear.bias is not None:
                fused.bias.copy_(linear.bias)
        return fused
        ### END SOLUTION

    def forward(self, a):
        """a (..., in_features) -> (..., out_features) in a's dtype (checks as
        FusedLayerNormLinear.forward, naming a)."""
        ### BEGIN SOLUTION
        _check_input(a, self.in_features, self.weight, name="a")
        return GELULinearFunction.apply(a, self.weight, self.bias, self.approximate)
        ### END SOLUTION

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, approximate={self.approximate!r}")


### BEGIN SOLUTION
def _check_bias_flag(bias):
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):  # eps = 0 is allowed, as in nn.LayerNorm
        raise ValueError(f"eps must be a finite float >= 0, got {eps}")


def _check_approximate(approximate):
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS}, got {approximate!r}")


def _check_input(x, in_features, weight, name="x"):
    check_tensor(name, x)
    if x.shape[-1] != in_features:
        raise ValueError(f"{name} must have last dim in_features={in_features}, got shape {tuple(x.shape)}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the module's parameters are {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"{name} is on {x.device} but the module's parameters are on {weight.device}")
### END SOLUTION
