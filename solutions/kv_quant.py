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
    ### BEGIN SOLUTION
    dim = _check_quantize_args(x, bits, dim, group_size)
    n = x.shape[dim]
    g = n if group_size is None else group_size
    g = max(g, 1)  # a zero-length dim: one empty group size, no groups
    num_groups = math.ceil(n / g)
    work = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32).movedim(dim, -1)  # (..., n)
    padded = torch.nn.functional.pad(work, (0, num_groups * g - n), value=math.nan)
    groups = padded.reshape(*work.shape[:-1], num_groups, g)  # (..., groups, g); the padding is NaN
    lo = torch.where(groups.isnan(), math.inf, groups).amin(dim=-1, keepdim=True)  # (..., groups, 1)
    hi = torch.where(groups.isnan(), -math.inf, groups).amax(dim=-1, keepdim=True)
    levels = 2 ** bits - 1
    scale = (hi - lo) / levels  # (..., groups, 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: codes 0, never x / 0
    codes = torch.where(scale > 0, torch.round((groups - lo) / safe), torch.zeros_like(groups))
    codes = codes.clamp(0, levels).nan_to_num(0.0).flatten(-2)[..., :n]  # (..., n)
    codes = codes.to(torch.uint8).movedim(-1, dim)  # back to x's layout
    store = lambda t: t.squeeze(-1).movedim(-1, dim).to(x.dtype).contiguous()  # (..., groups) in place of dim
    packed = codes if bits == 8 else pack_codes(codes, bits)  # packed along x's last axis
    return QuantizedTensor(codes=packed.contiguous(), scale=store(scale), zero=store(lo), bits=bits, dim=dim,
                           group_size=g, shape=tuple(x.shape), dtype=x.dtype)
    ### END SOLUTION


def dequantize(qx):
    """QuantizedTensor -> x_hat (qx.shape, qx.dtype): code * scale + zero, each element
    with the scale and zero of its group (computed in float32, float64 for float64)."""
    ### BEGIN SOLUTION
    if not isinstance(qx, QuantizedTensor):
        raise TypeError(f"qx must be a QuantizedTensor (from quantize), got {type(qx).__name__}")
    work = torch.float64 if qx.dtype == torch.float64 else torch.float32
    codes = qx.codes if qx.bits == 8 else unpack_codes(qx.codes, qx.bits, qx.shape[-1])
    codes = codes.to(work)  # (qx.shape)
    n = qx.shape[qx.dim]
    expand = lambda t: t.to(work).repeat_interleave(qx.group_size, dim=qx.dim).narrow(qx.dim, 0, n)
    return (codes * expand(qx.scale) + expand(qx.zero)).to(qx.dtype)
    ### END SOLUTION


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
        ### BEGIN SOLUTION
        for name, value in (("batch_size", batch_size), ("num_heads", num_heads),
                            ("max_seq_len", max_seq_len), ("head_dim", head_dim)):
            check_positive_int(name, value)
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
        if isinstance(residual, bool) or not isinstance(residual, int) or residual < 0:
            raise ValueError(f"residual must be an int >= 0, got {residual!r}")
        if group_size is not None:
            check_positive_int("group_size", group_size)
        elif residual == 0:
            raise ValueError("residual=0 needs a group_size: keys are quantized in groups of group_size tokens "
                             "(group_size=None means groups of `residual` tokens)")
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        self.batch_size, self.num_heads, self.max_seq_len, self.head_dim = batch_size, num_heads, max_seq_len, head_dim
        self.bits, self.residual, self.group_size = bits, residual, group_size
        self.key_group = residual if group_size is None else group_size  # G: tokens per key group
        self.dtype = dtype
        self.device = torch.empty(0, device=device).device
        self.reset()
        ### END SOLUTION

    def update(self, k, v):
        ### BEGIN SOLUTION
        check_cache_update(self, k, v)
        n = self.seq_len + k.shape[-2]
        if n > self.max_seq_len:
            raise ValueError(f"cache holds {self.max_seq_len} positions, update would make it {n} "
                             f"({self.seq_len} cached + {k.shape[-2]} new)")
        self.k_recent = torch.cat([self.k_recent, k], dim=2)  # (B, H, n - n_q, D), exact
        self.v_recent = torch.cat([self.v_recent, v], dim=2)
        self.seq_len = n
        G = self.key_group
        while self.k_recent.shape[2] - G >= self.residual:  # the oldest G exact tokens leave the window
            k_old, v_old = self.k_recent[:, :, :G], self.v_recent[:, :, :G]
            self.k_groups.append(quantize(k_old, self.bits, dim=-2, group_size=G))  # per channel over G tokens
            self.v_groups.append(quantize(v_old, self.bits, dim=-1, group_size=self.group_size))  # per token
            self.k_recent, self.v_recent = self.k_recent[:, :, G:].clone(), self.v_recent[:, :, G:].clone()
        k_all = torch.cat([dequantize(q) for q in self.k_groups] + [self.k_recent], dim=2)
        v_all = torch.cat([dequantize(q) for q in self.v_groups] + [self.v_recent], dim=2)
        return k_all, v_all
        ### END SOLUTION

    def reset(self):
        """Forget everything: seq_len = 0, no quantized groups, an empty residual window."""
        ### BEGIN SOLUTION
        empty = torch.zeros(self.batch_size, self.num_heads, 0, self.head_dim, dtype=self.dtype, device=self.device)
        self.k_recent, self.v_recent = empty, empty.clone()
        self.k_groups, self.v_groups = [], []
        self.seq_len = 0
        ### END SOLUTION

    @property
    def nbytes(self):
        ### BEGIN SOLUTION
        quantized = sum(q.nbytes for q in self.k_groups) + sum(q.nbytes for q in self.v_groups)
        return quantized + self.k_recent.nbytes + self.v_recent.nbytes
        ### END SOLUTION
