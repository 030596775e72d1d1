"""Input checks and the precision rule shared by every exercise.

Given to students as is (no exercise here). Each check raises a TypeError (wrong
kind of thing) or ValueError (right kind, wrong value) whose message names the
argument and what it got, so a mistake points at the caller, not at a torch
internal three frames down.
"""
import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The course's precision rule: half-precision inputs are computed in
    float32 (scores, softmax, running statistics); anything else as is."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def check_tensor(name, x, *, min_dim=1, dtypes=FLOAT_DTYPES):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dtypes is not None and x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {x.dtype}; supported: {allowed}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims, got shape {tuple(x.shape)}")


def check_dim(name, x, dim) -> int:
    """Validate a dimension index of `x` and return it as a non-negative int."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name} must be an int, got {type(dim).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"{name}={dim} is out of range for a tensor of shape {tuple(x.shape)}")
    return dim % x.dim()


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def check_scale(scale):
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")


def check_probability(name, p):
    """A probability in [0, 1), e.g. a dropout rate."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(p).__name__}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")


def check_same_shape(**tensors):
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes must match: {listing}")


def check_qk(q, k):
    """q (..., Lq, D) and k (..., Lk, D): same leading dims, same D, dtype, device."""
    check_tensor("q", q, min_dim=2)
    check_tensor("k", k, min_dim=2)
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must share a dtype, got q {q.dtype} and k {k.dtype}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on one device, got q on {q.device} and k on {k.device}")
    if q.dim() != k.dim() or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same leading "
            f"(batch, heads) dims: expected (..., Lq, D) and (..., Lk, D)")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head_dim, got {q.shape[-1]} and {k.shape[-1]}")


def check_qkv(q, k, v):
    """check_qk, plus v (..., Lk, Dv) matching k's leading dims and length."""
    check_qk(q, k)
    check_tensor("v", v, min_dim=2)
    if v.dtype != q.dtype:
        raise TypeError(f"v must have q's dtype {q.dtype}, got {v.dtype}")
    if v.device != q.device:
        raise ValueError(f"v must be on q's device {q.device}, got {v.device}")
    if v.dim() != k.dim() or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(
            f"v {tuple(v.shape)} must match k {tuple(k.shape)} in all dims but the last: "
            f"expected (..., Lk, Dv)")


def check_mask(mask, scores_shape, device):
    """A boolean (True = attend) or additive float mask that broadcasts to
    scores_shape (..., Lq, Lk) without enlarging it."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"mask must be bool (True = attend) or float (additive), got {mask.dtype}")
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but the scores are on {device}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != torch.Size(scores_shape):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
            f"{tuple(scores_shape)} (..., Lq, Lk)")
