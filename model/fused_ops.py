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
    raise NotImplementedError("L08: implement layer_norm_stats in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")


def gelu(a, approximate="none"):
    """GELU(a) = a * Phi(a), Phi the standard normal CDF, elementwise.

    approximate="none":  0.5 * a * (1 + erf(a / sqrt(2)))
    approximate="tanh":  0.5 * a * (1 + tanh(sqrt(2/pi) * (a + 0.044715 a^3)))
    Computed in compute_dtype(a.dtype), returned in a.dtype (as nn.GELU).
    """
    raise NotImplementedError("L08: implement gelu in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")


def gelu_derivative(a, approximate="none"):
    """d GELU(a) / da, elementwise, in compute_dtype(a.dtype).

    approximate="none":  Phi(a) + a * phi(a),   phi(a) = exp(-a^2 / 2) / sqrt(2 pi)
    approximate="tanh":  with u = sqrt(2/pi) (a + 0.044715 a^3) and t = tanh(u),
                         0.5 (1 + t) + 0.5 a (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 a^2)
    """
    raise NotImplementedError("L08: implement gelu_derivative in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")


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
        raise NotImplementedError("L08: implement LayerNormLinearFunction.forward in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")

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
        raise NotImplementedError("L08: implement LayerNormLinearFunction.backward in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")


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
        raise NotImplementedError("L08: implement GELULinearFunction.forward in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        """Recompute h = gelu(a); then
            grad_W = sum over tokens of grad_y^T h,  grad_b = sum of grad_y,
            grad_a = (grad_y W) * gelu'(a).
        Return gradients for (a, weight, bias, approximate)."""
        raise NotImplementedError("L08: implement GELULinearFunction.backward in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")


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
        raise NotImplementedError("L08: implement FusedLayerNormLinear.__init__ in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")

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
        raise NotImplementedError("L08: implement FusedLayerNormLinear.from_modules in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")

    def forward(self, x):
        """x (..., in_features) -> (..., out_features) in x's dtype.

        x must be a float tensor with the parameters' dtype (TypeError naming x)
        and device, and last dim in_features (ValueError naming x)."""
        raise NotImplementedError("L08: implement FusedLayerNormLinear.forward in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")

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
        raise NotImplementedError("L08: implement FusedGELULinear.__init__ in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")

    @classmethod
    def from_modules(cls, linear, *, approximate="none"):
        """A fused module computing linear(GELU(a, approximate)), with COPIES
        of linear's parameters in their dtype and on their device. linear must
        be an nn.Linear (TypeError naming linear)."""
        raise NotImplementedError("L08: implement FusedGELULinear.from_modules in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")

    def forward(self, a):
        """a (..., in_features) -> (..., out_features) in a's dtype (checks as
        FusedLayerNormLinear.forward, naming a)."""
        raise NotImplementedError("L08: implement FusedGELULinear.forward in model/fused_ops.py (see tutorial/L08_fused_ops/README.md)")

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, approximate={self.approximate!r}")


