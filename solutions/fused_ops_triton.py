"""L08 — Fused softmax and layer norm in Triton (the GPU path).

What it implements
    triton_softmax(x, block_size=None)                      softmax over the last dim, any row length
    triton_layer_norm(x, weight, bias, eps=1e-5, block_size=None)   F.layer_norm over the last dim
Both are forward only (inference, or the forward half of a fused training op):
they refuse inputs that require grad while autograd is recording, rather than
return a result that silently has no gradient.

Why fuse: an eager softmax is five kernels (max, subtract, exp, sum, divide),
each reading and/or writing a whole (rows, n) tensor in HBM: 5 reads and 3
writes in all. A fused kernel reads each row once, keeps it in registers (on-chip
SRAM), and writes the result once: 1 read + 1 write, the least any softmax can
move. A memory-bound op cannot beat a copy of the same bytes, so the copy is the
yardstick (benchmarks/fused_bandwidth_gpu.py).

Layout: x is viewed as (n_rows, n_cols) = (prod of leading dims, last dim). A
program owns BLOCK_M whole rows (BLOCK_M = 1 for long rows; several short rows
share a program so that each program moves enough bytes to keep the memory
system busy). Two strategies per kernel:
  - single block (n_cols <= MAX_BLOCK_SIZE = 32768 elements): BLOCK_N =
    next_power_of_2(n_cols), the row lives in registers from load to store.
    Traffic: 1 read + 1 write.
  - looped (longer rows, e.g. a 128k-vocabulary softmax): blocks of
    LOOP_BLOCK_SIZE = 4096 columns, two passes. Pass 1 streams the row once to
    get its statistics (softmax: running max m_i and rescaled sum l_i, the
    online softmax of L02; layer norm: running mean and sum of squared
    deviations, Chan's parallel merge), pass 2 streams it again to write the
    output. Traffic: 2 reads + 1 write (the second read often hits L2).
Columns past n_cols (the tail of the last block) are masked: softmax loads them
as -inf (exp(-inf) = 0 adds nothing to the sum), layer norm as 0 and excludes
them from the variance.

Limits: x float32, float16 or bfloat16 (statistics always in float32, output in
x's dtype; no float64). Rows of any length, a row stride of any size (the last
dim must be contiguous, else x is copied once). CUDA tensors, or CPU tensors
under the Triton interpreter (TRITON_INTERPRET=1 set before triton is imported;
the interpreter has no bfloat16). Importing this module does not touch the GPU.

Tested on: the lesson's suites under the interpreter on CPU (Triton 3.9;
float32, float16; row lengths 1 to ~16k, both strategies, -inf rows, strided
inputs). Compiled ahead of time for sm_90 (H100) with Triton 3.9's ptxas: no
register spills at any block size. The suites' gpu tests run the kernels on
CUDA in float32, float16 and bfloat16 at realistic shapes (up to 128k columns).
Names follow the Triton tutorials and the FlashAttention papers (offs_m,
offs_n, m_i, l_i, stride_xm); tl.constexpr arguments are UPPERCASE.
"""
import contextlib
import math
import numbers
import os

import torch
import triton
import triton.language as tl

from ._checks import check_tensor

MAX_BLOCK_SIZE = 32768     # longest row kept whole in registers: 128 KiB of float32 per program, 64 values
                           # per thread at 16 warps (H100: 1.34x the looped kernel's bandwidth at 32k); longer
                           # rows loop
LOOP_BLOCK_SIZE = 4096     # columns per step of the looped strategy (16 KiB of float32 per step)
TILE_ELEMENTS = 4096       # short rows are packed BLOCK_M to a program until a tile holds this many
MAX_ROWS_PER_PROGRAM = 16  # ... but no more rows than this (the grid must still fill every SM)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"   # read once, as triton does when decorating


def launch_config(n_cols, block_size=None):
    """(BLOCK_M, BLOCK_N, num_warps, looped) for rows of n_cols elements (given, no exercise).

    BLOCK_N: the whole row rounded up to a power of two (tl.arange needs one),
    or LOOP_BLOCK_SIZE when that exceeds MAX_BLOCK_SIZE; `block_size` overrides
    it (a power of two), and rows longer than it take the looped strategy.
    BLOCK_M: rows per program, so that a tile holds about TILE_ELEMENTS values.
    num_warps grows with the tile so that each of its 32 * num_warps threads
    holds about 16 values (16 KiB of float32 per 8 warps): far fewer and each
    thread has too little to load to hide the memory latency, far more and the
    registers spill. Clamped to 4..16 warps: 16 warps are 512 threads, a
    quarter of what an H100 SM holds, so several programs still share an SM.
    """
    whole_row = triton.next_power_of_2(max(n_cols, 1))
    if block_size is None:
        BLOCK_N = whole_row if whole_row <= MAX_BLOCK_SIZE else LOOP_BLOCK_SIZE
    else:
        BLOCK_N = min(block_size, whole_row)  # never a block wider than the row needs
    looped = BLOCK_N < n_cols
    BLOCK_M = 1 if looped else max(1, min(MAX_ROWS_PER_PROGRAM, TILE_ELEMENTS // BLOCK_N))
    num_warps = min(16, max(4, BLOCK_M * BLOCK_N // (16 * 32)))   # 16 values per thread, 32 threads a warp
    return BLOCK_M, BLOCK_N, num_warps, looped


# --------------------------------------------------------------------------
# Softmax
# --------------------------------------------------------------------------

@triton.jit
def softmax_kernel(out_ptr, x_ptr, n_rows, n_cols, stride_xm, stride_om,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Single block. Program pid owns rows [pid * BLOCK_M, pid * BLOCK_M + BLOCK_M)
    of x and out, each whole: BLOCK_N (a power of two) >= n_cols.

    x_ptr, out_ptr: (n_rows, n_cols) matrices with unit column stride and row
    strides stride_xm, stride_om (in elements). Rows past n_rows and columns
    past n_cols must be masked. Per row, in float32:
        out = exp(x - max) / sum(exp(x - max)),
    stored in out's dtype; a row that is entirely -inf gives zeros (not NaN).
    Reads x once, writes out once."""
    ### BEGIN SOLUTION
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)                      # (BLOCK_M,) this program's rows
    offs_n = tl.arange(0, BLOCK_N)                                      # (BLOCK_N,) the whole row, padded
    mask = (offs_m[:, None] < n_rows) & (offs_n[None, :] < n_cols)      # (BLOCK_M, BLOCK_N): the tail, the last rows
    rows = offs_m.to(tl.int64)[:, None]                                 # int64: rows * stride may pass 2^31
    # -- load: the ONE read of x. Padding reads as -inf, so it adds exp(-inf) = 0 to the sum --
    x = tl.load(x_ptr + rows * stride_xm + offs_n[None, :], mask=mask, other=float("-inf"))
    x = x.to(tl.float32)                                                # half inputs: statistics in float32
    # -- m_i: row max. Subtracting it makes every exponent <= 0: nothing overflows --
    m_i = tl.max(x, axis=1)                                             # (BLOCK_M,)
    m_i = tl.where(m_i == float("-inf"), 0.0, m_i)                      # all -inf row: avoid -inf - (-inf) = nan
    # -- p and l_i: exponentials and their row sum, all in registers --
    p = tl.exp(x - m_i[:, None])                                        # (BLOCK_M, BLOCK_N), in [0, 1]
    l_i = tl.sum(p, axis=1)                                             # (BLOCK_M,), >= 1 unless the row is empty
    inv_l = 1.0 / tl.where(l_i > 0.0, l_i, 1.0)                         # empty row: p is all 0, 0 * 1 = 0
    # -- epilogue: the ONE write, in out's dtype --
    out = p * inv_l[:, None]
    tl.store(out_ptr + rows * stride_om + offs_n[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    ### END SOLUTION


@triton.jit
def softmax_looped_kernel(out_ptr, x_ptr, n_rows, n_cols, stride_xm, stride_om,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Looped (online) softmax, same arguments and result as softmax_kernel, for
    rows longer than one block (BLOCK_N < n_cols): walk each row in blocks of
    BLOCK_N. Pass 1 keeps a running max m_i and a running sum l_i of
    exp(x - m_i), rescaling l_i by exp(m_old - m_new) whenever the max grows;
    pass 2 writes exp(x - m_i) / l_i. Reads x twice, writes out once."""
    ### BEGIN SOLUTION
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)                      # (BLOCK_M,)
    row_mask = offs_m < n_rows
    rows = offs_m.to(tl.int64)[:, None]
    x_rows = x_ptr + rows * stride_xm                                   # (BLOCK_M, 1) row starts
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)                 # running max
    l_i = tl.zeros([BLOCK_M], tl.float32)                               # running sum of exp(x - m_i)
    # -- pass 1: statistics. read n_cols per row, write nothing --
    for start in range(0, n_cols, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask = row_mask[:, None] & (offs_n[None, :] < n_cols)
        x = tl.load(x_rows + offs_n[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m_i, tl.max(x, axis=1))                      # (BLOCK_M,)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)          # nothing finite yet: keep exps at 0
        alpha = tl.exp(m_i - m_safe)                                    # rescale the old sum to the new max
        l_i = l_i * alpha + tl.sum(tl.exp(x - m_safe[:, None]), axis=1)
        m_i = m_new
    m_i = tl.where(m_i == float("-inf"), 0.0, m_i)                      # all -inf row
    inv_l = 1.0 / tl.where(l_i > 0.0, l_i, 1.0)
    # -- pass 2: normalise. read n_cols again (often from L2), write n_cols --
    out_rows = out_ptr + rows * stride_om
    for start in range(0, n_cols, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask = row_mask[:, None] & (offs_n[None, :] < n_cols)
        x = tl.load(x_rows + offs_n[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        out = tl.exp(x - m_i[:, None]) * inv_l[:, None]
        tl.store(out_rows + offs_n[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    ### END SOLUTION


def triton_softmax(x, block_size=None):
    """softmax(x) over the last dim, in one fused Triton kernel.

    x: float32/float16/bfloat16 tensor with >= 1 dim, on CUDA (or on the CPU
    under TRITON_INTERPRET=1). Returns a new tensor of x's shape and dtype;
    the arithmetic is float32. A row that is entirely -inf gives zeros.
    block_size: None (the fast default: whole rows up to MAX_BLOCK_SIZE = 32768
    elements, longer rows in LOOP_BLOCK_SIZE = 4096 blocks), or a power of two
    >= 16 that forces the block width: rows longer than it take the looped
    two-pass path. The result does not depend on it.
    Errors: TypeError naming x (not a tensor, wrong dtype), ValueError naming x
    (0-dim, wrong device, requires grad while grad is enabled) or block_size.
    """
    ### BEGIN SOLUTION
    _check_triton_input(x)
    _check_block_size(block_size)
    if x.numel() == 0:
        return torch.empty_like(x)
    x2, n_rows, n_cols = _as_rows(x)                                    # (n_rows, n_cols), last dim contiguous
    out = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    BLOCK_M, BLOCK_N, num_warps, looped = launch_config(n_cols, block_size)
    kernel = softmax_looped_kernel if looped else softmax_kernel
    grid = (triton.cdiv(n_rows, BLOCK_M),)                              # one program per BLOCK_M rows
    with _device_of(x):
        kernel[grid](out, x2, n_rows, n_cols, x2.stride(0), out.stride(0),
                     BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps)
    return out.view(x.shape)
    ### END SOLUTION


# --------------------------------------------------------------------------
# Layer norm
# --------------------------------------------------------------------------

@triton.jit
def layer_norm_kernel(out_ptr, x_ptr, w_ptr, b_ptr, n_rows, n_cols, stride_xm, stride_om, eps,
                      HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Single block, laid out as softmax_kernel (BLOCK_M whole rows per program).
    Per row, in float32 over the n_cols real columns:
        mean = sum(x) / n,  var = sum((x - mean)^2) / n (biased),  rstd = 1 / sqrt(var + eps),
        out = (x - mean) * rstd * w + b,
    w, b: (n_cols,) read through w_ptr, b_ptr only when HAS_WEIGHT / HAS_BIAS.
    Reads x once (and w, b), writes out once."""
    ### BEGIN SOLUTION
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)                      # (BLOCK_M,)
    offs_n = tl.arange(0, BLOCK_N)                                      # (BLOCK_N,)
    col_mask = offs_n < n_cols
    mask = (offs_m[:, None] < n_rows) & col_mask[None, :]               # (BLOCK_M, BLOCK_N)
    rows = offs_m.to(tl.int64)[:, None]
    # -- load: the one read of x; padding reads as 0 so it adds nothing to the sum --
    x = tl.load(x_ptr + rows * stride_xm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    # -- statistics: two passes over the row, but over registers, not memory --
    mean = tl.sum(x, axis=1) / n_cols                                   # (BLOCK_M,)
    xc = tl.where(mask, x - mean[:, None], 0.0)                         # padding would add (0 - mean)^2
    var = tl.sum(xc * xc, axis=1) / n_cols                              # biased, as nn.LayerNorm
    rstd = 1.0 / tl.sqrt(var + eps)                                     # eps inside the root
    y = xc * rstd[:, None]                                              # x_hat, (BLOCK_M, BLOCK_N)
    # -- affine: w and b are (n_cols,), shared by every row of the tile --
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(b_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows * stride_om + offs_n[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
    ### END SOLUTION


@triton.jit
def layer_norm_looped_kernel(out_ptr, x_ptr, w_ptr, b_ptr, n_rows, n_cols, stride_xm, stride_om, eps,
                             HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Looped layer norm for rows longer than one block. Pass 1 merges per-block
    statistics (count n_b, mean_b, M2_b = sum of squared deviations from mean_b)
    into running ones with Chan et al.'s rule, stable like a two-pass variance:
        n = n_a + n_b,  delta = mean_b - mean_a,
        mean = mean_a + delta * n_b / n,   M2 = M2_a + M2_b + delta^2 * n_a * n_b / n.
    Pass 2 writes (x - mean) * rstd * w + b. Reads x twice, writes out once."""
    ### BEGIN SOLUTION
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = offs_m < n_rows
    rows = offs_m.to(tl.int64)[:, None]
    x_rows = x_ptr + rows * stride_xm
    mean = tl.zeros([BLOCK_M], tl.float32)                              # running mean of the blocks so far
    m2 = tl.zeros([BLOCK_M], tl.float32)                                # running sum of (x - mean)^2
    # -- pass 1: statistics, one block at a time --
    for start in range(0, n_cols, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        col_mask = offs_n < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        x = tl.load(x_rows + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        n_b = tl.sum(col_mask.to(tl.float32), axis=0)                   # columns in this block: BLOCK_N but at the tail
        mean_b = tl.sum(x, axis=1) / n_b
        xc = tl.where(mask, x - mean_b[:, None], 0.0)
        m2_b = tl.sum(xc * xc, axis=1)
        n_a = start * 1.0                                               # columns merged so far (all full blocks)
        n_ab = n_a + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / n_ab)
        m2 = m2 + m2_b + delta * delta * (n_a * n_b / n_ab)
    rstd = 1.0 / tl.sqrt(m2 / n_cols + eps)                             # biased variance = M2 / n
    # -- pass 2: normalise and write --
    out_rows = out_ptr + rows * stride_om
    for start in range(0, n_cols, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        col_mask = offs_n < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        x = tl.load(x_rows + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        y = (x - mean[:, None]) * rstd[:, None]
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            y = y + tl.load(b_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_rows + offs_n[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
    ### END SOLUTION


def triton_layer_norm(x, weight, bias, eps=1e-5, block_size=None):
    """F.layer_norm(x, (n,), weight, bias, eps) over the last dim n, in one fused Triton kernel.

    x: float32/float16/bfloat16 with >= 1 dim (CUDA, or CPU under the
    interpreter); weight, bias: (n,) float tensors on x's device, or None
    (weight None = ones, no scale; bias None = zeros, no shift; as F.layer_norm).
    eps: a finite float >= 0 (0 is allowed, as in F.layer_norm; negative is a
    ValueError), added to the biased variance inside the square root. Returns x's shape and dtype; statistics in float32.
    block_size: as for triton_softmax. Errors: TypeError/ValueError naming x,
    weight, bias, eps or block_size.
    """
    ### BEGIN SOLUTION
    _check_triton_input(x)
    _check_block_size(block_size)
    n = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        _check_triton_input(p, name)
        if tuple(p.shape) != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match x's last dim, got {tuple(p.shape)}")
        if p.device != x.device:
            raise ValueError(f"{name} is on {p.device} but x is on {x.device}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):  # eps = 0 is allowed, as in F.layer_norm
        raise ValueError(f"eps must be a finite float >= 0, got {eps}")
    if x.numel() == 0:
        return torch.empty_like(x)
    x2, n_rows, n_cols = _as_rows(x)
    out = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    BLOCK_M, BLOCK_N, num_warps, looped = launch_config(n_cols, block_size)
    kernel = layer_norm_looped_kernel if looped else layer_norm_kernel
    w = weight.contiguous() if weight is not None else x2                # a dummy pointer when absent:
    b = bias.contiguous() if bias is not None else x2                    # HAS_WEIGHT=False never reads it
    grid = (triton.cdiv(n_rows, BLOCK_M),)
    with _device_of(x):
        kernel[grid](out, x2, w, b, n_rows, n_cols, x2.stride(0), out.stride(0), float(eps),
                     HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
                     BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps)
    return out.view(x.shape)
    ### END SOLUTION


### BEGIN SOLUTION
def _check_triton_input(t, name="x"):
    check_tensor(name, t, dtypes=SUPPORTED_DTYPES)
    if t.device.type == "cpu" and not INTERPRETED:
        raise ValueError(f"{name} is on the CPU: Triton kernels run on CUDA tensors, or on CPU tensors "
                         "under the interpreter (set TRITON_INTERPRET=1 before importing triton)")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on {t.device}: Triton kernels here run on CUDA (or the CPU interpreter)")
    if INTERPRETED and t.dtype == torch.bfloat16:
        raise TypeError(f"{name} is bfloat16, which the Triton interpreter cannot run (numpy has no "
                        "bfloat16): use float16 or float32 on the CPU, or a GPU")
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} requires grad, but this kernel is forward only (no backward): call it "
                         "under torch.no_grad(), or use torch's op when you need gradients")


def _check_block_size(block_size):
    if block_size is None:
        return
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be an int or None, got {type(block_size).__name__}")
    if block_size < 16 or block_size & (block_size - 1) or block_size > MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be a power of two in [16, {MAX_BLOCK_SIZE}], got {block_size}")


def _as_rows(x):
    """x (..., n) -> a (n_rows, n) view whose last dim has stride 1 (a copy
    only when the input's last dim is strided), plus n_rows and n."""
    n_cols = x.shape[-1]
    x2 = x.reshape(-1, n_cols)      # a view whenever the leading dims can merge
    if n_cols > 1 and x2.stride(-1) != 1:
        x2 = x2.contiguous()        # the kernels assume unit stride along a row
    return x2, x2.shape[0], n_cols


def _device_of(x):
    """Launch on x's GPU (Triton launches on the *current* device)."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()
### END SOLUTION
