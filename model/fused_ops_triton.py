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
    raise NotImplementedError("L08: implement softmax_kernel in model/fused_ops_triton.py (see tutorial/L08_fused_ops/README.md)")


@triton.jit
def softmax_looped_kernel(out_ptr, x_ptr, n_rows, n_cols, stride_xm, stride_om,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Looped (online) softmax, same arguments and result as softmax_kernel, for
    rows longer than one block (BLOCK_N < n_cols): walk each row in blocks of
    BLOCK_N. Pass 1 keeps a running max m_i and a running sum l_i of
    exp(x - m_i), rescaling l_i by exp(m_old - m_new) whenever the max grows;
    pass 2 writes exp(x - m_i) / l_i. Reads x twice, writes out once."""
    raise NotImplementedError("L08: implement softmax_looped_kernel in model/fused_ops_triton.py (see tutorial/L08_fused_ops/README.md)")


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
    raise NotImplementedError("L08: implement triton_softmax in model/fused_ops_triton.py (see tutorial/L08_fused_ops/README.md)")


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
    raise NotImplementedError("L08: implement layer_norm_kernel in model/fused_ops_triton.py (see tutorial/L08_fused_ops/README.md)")


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
    raise NotImplementedError("L08: implement layer_norm_looped_kernel in model/fused_ops_triton.py (see tutorial/L08_fused_ops/README.md)")


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
    raise NotImplementedError("L08: implement triton_layer_norm in model/fused_ops_triton.py (see tutorial/L08_fused_ops/README.md)")


