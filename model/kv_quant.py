"""L12 part 1 — A quantized KV cache (asymmetric min-max, KIVI's grouping).

Quantization maps each group of real numbers to b-bit integer codes and back:

    lo, hi = min(group), max(group)
    scale  = (hi - lo) / (2^b - 1)                   a step of the integer grid
    code   = clamp(round((x - lo) / scale), 0, 2^b - 1)
    x_hat  = code * scale + lo                       |x - x_hat| <= scale / 2

"Asymmetric" because the grid starts at the group's minimum (the zero point
`lo`) instead of being centred on 0: a group of values in [3, 5] uses all 2^b
levels, where a symmetric grid over [-5, 5] would waste more than half of them.
A constant group (hi == lo) has scale 0: every code is 0 and x_hat = lo,
exactly; nothing is divided by zero.

Which elements share a group matters more than the number of bits (KIVI, Liu
et al. 2024): keys have a few OUTLIER CHANNELS (dims whose magnitude is large
at every token; the RoPE pairs of low frequency carry them), values do not.
So keys are grouped PER CHANNEL, along the tokens (each channel gets its own
range, an outlier channel spoils only itself), and values PER TOKEN, along the
channels (each value vector is mixed by the attention weights of one token).

Packing: with b = 4 or 2, 8 / b codes share one uint8 byte. Codes are packed
along the LAST axis of the tensor: element j of a row goes to byte j // (8 / b),
at bits [(j % (8 / b)) * b, (j % (8 / b)) * b + b) - the first element in the
LOW bits. A row whose length is not a multiple of 8 / b is padded with zero codes.

Shapes (course letters): the cache holds (B, H, T, D) for H = the number of
key/value heads; keys are grouped over G tokens per (b, h, channel), values
over Gv channels per (b, h, token).

Exercises: quantize, dequantize, QuantizedKVCache.__init__/update/reset/nbytes.
Given: QuantizedTensor, pack_codes, unpack_codes.
"""
import math
from dataclasses import dataclass

import torch

from ._checks import FLOAT_DTYPES, check_cache_update, check_dim, check_positive_int, check_tensor

SUPPORTED_BITS = (2, 4, 8)


@dataclass
class QuantizedTensor:
    """What quantize returns.

    codes: uint8, the integer codes of x packed along x's LAST axis (see the module text):
           shape (*x.shape[:-1], ceil(x.shape[-1] * bits / 8));
    scale, zero: x.dtype, x's shape with `dim` replaced by the number of groups
           ceil(x.shape[dim] / group_size); group g covers indices
           [g * group_size, (g + 1) * group_size) of `dim` (the last group may be shorter);
    bits, dim (non-negative), group_size (an int: x.shape[dim] when None was given), shape (x's), dtype (x's).
    nbytes = bytes of codes + scale + zero (exactly what the quantized tensor stores).
    """
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    dim: int
    group_size: int
    shape: tuple
    dtype: torch.dtype

    @property
    def nbytes(self):
        return self.codes.nbytes + self.scale.nbytes + self.zero.nbytes


def pack_codes(codes, bits):
    """Integer codes (..., N) in [0, 2^bits) -> uint8 (..., ceil(N * bits / 8)), first element in the low bits."""
    per_byte = 8 // bits
    n = codes.shape[-1]
    pad = (-n) % per_byte
    codes = torch.nn.functional.pad(codes.to(torch.uint8), (0, pad))
    codes = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per_byte, per_byte)  # (..., bytes, per_byte)
    shifts = torch.arange(per_byte, device=codes.device, dtype=torch.uint8) * bits  # 0, b, 2b, ...
    return (codes << shifts).sum(dim=-1, dtype=torch.uint8)  # the fields do not overlap: sum == bitwise or


def unpack_codes(packed, bits, n):
    """The inverse of pack_codes: uint8 (..., bytes) -> uint8 codes (..., n)."""
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.uint8) * bits
    codes = (packed[..., None] >> shifts) & ((1 << bits) - 1)  # (..., bytes, per_byte)
    return codes.flatten(-2)[..., :n]


def _check_quantize_args(x, bits, dim, group_size):
    check_tensor("x", x, min_dim=1)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    dim = check_dim("dim", x, dim)
    if group_size is not None:
        check_positive_int("group_size", group_size)
    return dim


def quantize(x, bits, dim, group_size=None):
    """Asymmetric min-max quantization of x in groups along `dim` -> QuantizedTensor.

    Groups: consecutive runs of `group_size` indices along `dim` (None: the
    whole of `dim` is one group), separately for every index of the other dims.
    Per group: zero = min, scale = (max - min) / (2^bits - 1), codes =
    clamp(round((x - zero) / scale), 0, 2^bits - 1), with code 0 where scale == 0.
    Statistics are computed in float32 (float64 for float64 x); scale and zero
    are stored in x.dtype. bits in (2, 4, 8); 4 and 2 bits are packed.
    Errors: x not a float tensor (naming x), bits not 2/4/8 (naming bits), dim
    out of range (naming dim), group_size not None or an int >= 1 (naming group_size).
    """
    raise NotImplementedError("L12: implement quantize in model/kv_quant.py (see tutorial/L12_kv_compression/README.md)")


def dequantize(qx):
    """QuantizedTensor -> x_hat (qx.shape, qx.dtype): code * scale + zero, each element
    with the scale and zero of its group (computed in float32, float64 for float64)."""
    raise NotImplementedError("L12: implement dequantize in model/kv_quant.py (see tutorial/L12_kv_compression/README.md)")


class QuantizedKVCache:
    """A KV cache that stores old tokens as b-bit codes and the newest in full precision.

    QuantizedKVCache(batch_size, num_heads, max_seq_len, head_dim, bits=8, residual=32,
                     group_size=None, dtype=torch.float32, device=None)

    Keys: quantize(k, bits, dim=-2, group_size=G) - per channel, over groups of G
    tokens, G = group_size, or `residual` when group_size is None.
    Values: quantize(v, bits, dim=-1, group_size=group_size) - per token, over
    groups of group_size channels (None: the whole head_dim).

    How tokens move (a function of seq_len alone): after an update of seq_len = n
    tokens, the first
        n_q = max(0, (n - residual) // G) * G
    tokens are quantized, in key groups [0, G), [G, 2G), ... of absolute token
    index, and the last n - n_q tokens (at least min(n, residual), fewer than
    residual + G) are held exactly in `dtype`. When an update pushes n_q up, the
    oldest full-precision tokens leave the residual window G at a time and are
    quantized; a quantized token is never re-quantized.

    update(k, v) -> (k_all, v_all), (B, H, seq_len, D) in `dtype`: the dequantized
    history followed by the exact recent tokens (new tensors, not views).
    nbytes: the bytes the cache stores for its seq_len tokens: codes, scales and
    zero points of the quantized tokens, plus 2 * B * H * (n - n_q) * D * element
    size for the residual window.
    Errors: as L04's KVCache (k, v shapes, dtype, device, overflow of max_seq_len),
    bits not 2/4/8, residual not an int >= 0, group_size not None or an int >= 1,
    residual == 0 with group_size None. A rejected update leaves the cache unchanged.
    """

    def __init__(self, batch_size, num_heads, max_seq_len, head_dim, bits=8, residual=32, group_size=None,
                 dtype=torch.float32, device=None):
        raise NotImplementedError("L12: implement QuantizedKVCache.__init__ in model/kv_quant.py (see tutorial/L12_kv_compression/README.md)")

    def update(self, k, v):
        raise NotImplementedError("L12: implement QuantizedKVCache.update in model/kv_quant.py (see tutorial/L12_kv_compression/README.md)")

    def reset(self):
        """Forget everything: seq_len = 0, no quantized groups, an empty residual window."""
        raise NotImplementedError("L12: implement QuantizedKVCache.reset in model/kv_quant.py (see tutorial/L12_kv_compression/README.md)")

    @property
    def nbytes(self):
        raise NotImplementedError("L12: implement QuantizedKVCache.nbytes in model/kv_quant.py (see tutorial/L12_kv_compression/README.md)")
