"""The Triton wrappers accept inputs that require grad and return a result without a graph: training through them silently gets no gradient."""
MODULE = "fused_ops_triton"
CAUGHT_BY = "advanced"

_right_check = _check_triton_input


def _check_triton_input(t, name="x"):
    with torch.no_grad():
        _right_check(t.detach() if isinstance(t, torch.Tensor) else t, name)
