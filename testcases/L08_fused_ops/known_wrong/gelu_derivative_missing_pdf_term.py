"""GELU's derivative taken as Phi(a), forgetting the product rule's a * phi(a) term (d/da of a * Phi(a))."""
MODULE = "fused_ops"

_gelu_derivative_right = gelu_derivative


def gelu_derivative(a, approximate="none"):
    if approximate == "tanh":
        return _gelu_derivative_right(a, approximate)
    ac = a.to(compute_dtype(a.dtype))
    return 0.5 * (1.0 + torch.erf(ac * SQRT_1_OVER_2))
