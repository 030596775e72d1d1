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


def check_non_negative_int(name, value):
    """A size that may be 0 (an empty batch, a zero-length sequence): an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_flag(name, value):
    """A Python bool. Flags such as causal, training or return_weights take True
    or False only: "no" and a one-element tensor are truthy, None is falsy, and
    silently reading them as bools hides a wrong call."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r:.40}")


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


def check_cache_update(cache, k, v):
    """k and v (B, H, L_new, D) fit `cache` (anything with batch_size, num_heads,
    head_dim, dtype and device): the KV caches of L04 and L07."""
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, min_dim=4)
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, L_new, D), got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    expected = (cache.batch_size, cache.num_heads, cache.head_dim)
    got = (k.shape[0], k.shape[1], k.shape[3])
    if got != expected:
        raise ValueError(f"k has (batch, heads, head_dim) = {got}, but the cache was made for {expected}")
    if k.dtype != cache.dtype or v.dtype != cache.dtype:
        raise TypeError(f"k and v must have the cache's dtype {cache.dtype}, got k {k.dtype} and v {v.dtype}")
    if k.device != cache.device or v.device != cache.device:
        raise ValueError(f"k and v must be on the cache's device {cache.device}, got {k.device} and {v.device}")


def check_key_padding_mask(key_padding_mask, batch, num_cached, num_new, device, input_name):
    """A bool (B, Lk) mask, True = real token, over every key attended to: the
    num_cached keys already in the cache, then the num_new ones of this call."""
    if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
        got = getattr(key_padding_mask, "dtype", type(key_padding_mask).__name__)
        raise TypeError(f"key_padding_mask must be a bool tensor (True = real token), got {got}")
    if tuple(key_padding_mask.shape) != (batch, num_cached + num_new):
        raise ValueError(
            f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected (B, Lk) = "
            f"({batch}, {num_cached + num_new}): it covers every key attended to, the {num_cached} cached ones "
            f"included")
    if key_padding_mask.device != device:
        raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but {input_name} is on {device}")


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


def check_num_splits(num_splits):
    """num_splits of the split-KV kernels: None (the launcher chooses) or an int >= 1."""
    if num_splits is None:
        return
    if isinstance(num_splits, bool) or not isinstance(num_splits, numbers.Integral):
        raise TypeError(f"num_splits must be an int or None, got {type(num_splits).__name__}")
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")


def check_kv_lens(kv_lens, batch, max_len, device=None):
    """kv_lens of the decode paths: None, or an integer (batch,) tensor with values in 0..max_len,
    on `device` where one is given (the Triton kernels read it there). The range check reads the
    values: one host sync."""
    if kv_lens is None:
        return
    if not isinstance(kv_lens, torch.Tensor):
        raise TypeError(f"kv_lens must be an integer tensor of shape (B,) or None, got {type(kv_lens).__name__}")
    if kv_lens.dtype.is_floating_point or kv_lens.dtype.is_complex or kv_lens.dtype == torch.bool:
        raise TypeError(f"kv_lens must have an integer dtype, got {kv_lens.dtype}")
    if tuple(kv_lens.shape) != (batch,):
        raise ValueError(f"kv_lens has shape {tuple(kv_lens.shape)}, expected (B,) = ({batch},)")
    if device is not None and kv_lens.device != device:
        raise ValueError(f"kv_lens is on {kv_lens.device} but q is on {device}")
    # a length past T would read outside the cache: checked here, at the cost of one host sync
    if batch and (int(kv_lens.min()) < 0 or int(kv_lens.max()) > max_len):
        raise ValueError(f"kv_lens must lie in 0..T = 0..{max_len}, got {kv_lens.tolist()}")


def check_triton_device(x, interpreted, name="q"):
    """The Triton kernels run on CUDA tensors, or on CPU tensors under Triton's
    interpreter (`interpreted`: TRITON_INTERPRET=1 when the kernel module was imported)."""
    if x.device.type == "cpu" and not interpreted:
        raise ValueError(f"{name} is on the CPU: Triton runs CPU tensors only under TRITON_INTERPRET=1, set before "
                         f"this module (and triton) is first imported; otherwise move q, k, v to a CUDA device")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a CUDA device (or the CPU under the interpreter), got {x.device}")


def contiguous_last(x):
    """x itself if its last dim has unit stride, else a contiguous copy: the
    Triton kernels take every stride as an argument but the head_dim one."""
    return x if x.stride(-1) == 1 else x.contiguous()

