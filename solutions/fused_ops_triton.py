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

Layout: x is viewed as (n_rows, n_cols) = (prod of leading dims, last dim). The
rows are cut into tiles of BLOCK_M whole rows. Read each kernel first as the
easy version: BLOCK_M = 1 and one program per row, which is the Triton
tutorial's kernel. Two levers then make it fast at every shape, and neither
changes the arithmetic:
  - several rows per program (BLOCK_M > 1, a 2-D (BLOCK_M, BLOCK_N) tile) for
    short rows, so that each program moves enough bytes to keep the memory busy;
  - a persistent grid: a fixed number of programs (a few per SM) that walk the
    tiles with a stride of the grid size, so the tail of the last wave is paid
    once, and (num_stages = 2) each program loads its next tile while it reduces
    this one.
choose_config below picks BLOCK_M, BLOCK_N, num_warps and the grid from the
shape, and says why.
Three strategies per op:
  - single block (rows up to SINGLE_BLOCK_MAX by default, MAX_BLOCK_SIZE when
    forced): BLOCK_N = next_power_of_2(n_cols), the row lives in registers from
    load to store. Traffic: 1 read + 1 write.
  - looped (longer rows, e.g. a 128k-vocabulary softmax): blocks of BLOCK_N
    columns, two passes, and x is read AT MOST TWICE. Pass 1 streams the row once
    to get all its statistics together (softmax: running max m_i and rescaled sum
    l_i, the online softmax of L02; layer norm: running mean and sum of squared
    deviations, Chan's parallel merge), pass 2 streams it again to write the
    output. Traffic: 2 reads + 1 write; pass 1 asks L2 to keep x
    (eviction_policy="evict_last") so the second read mostly hits L2.
  - split (given, not an exercise: long rows too few to fill the GPU): each row
    cut into chunks with a program each, two kernels (chunk statistics, then
    merge and normalise). Traffic as the looped path's.
Columns past n_cols (the tail of the last block) are masked: softmax loads them
as -inf (exp(-inf) = 0 adds nothing to the sum), layer norm as 0 and excludes
them from the variance. Rows past n_rows (the last tile) are masked too.

Limits: x float32, float16 or bfloat16 (statistics always in float32, output in
x's dtype; no float64). Rows of any length, a row stride of any size (the last
dim must be contiguous, else x is copied once). CUDA tensors, or CPU tensors
under the Triton interpreter (TRITON_INTERPRET=1 set before triton is imported;
the interpreter has no bfloat16). Importing this module does not touch the GPU.

Tested on: the lesson's suites under the interpreter on CPU (Triton 3.9;
float32, float16; row lengths 1 to ~33k, both strategies, several tiles per
program, -inf rows, strided inputs). The suites' gpu tests run the kernels on
CUDA in float32, float16 and bfloat16 at realistic shapes (up to 128k columns),
on an NVIDIA H200 with Triton 3.6.
Names follow the Triton tutorials and the FlashAttention papers (offs_m,
offs_n, m_i, l_i, stride_xm); tl.constexpr arguments and module constants used
inside kernels are UPPERCASE.
"""
import contextlib
import functools
import math
import numbers
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._checks import check_tensor
from ._triton_constants import LOG2E  # tl.constexpr: visible inside the kernels

MAX_BLOCK_SIZE = 32768     # longest row kept whole in registers (and the largest block_size accepted)
SINGLE_BLOCK_MAX = 8192    # the default keeps whole rows up to this many elements (see choose_config)
LOOP_BLOCK_SIZE = 16384    # the widest step of the looped strategy (see choose_config)
SPLIT_CHUNK, SPLIT_WARPS = 4096, 8   # columns and warps per program of the split strategy
TILE_BYTES = 16384         # short rows are packed BLOCK_M to a program until a tile holds this many bytes of x
MAX_ROWS_PER_PROGRAM = 4   # ... but rows of 1024+ elements no more than this many (16 for shorter rows)
BYTES_PER_THREAD = 64      # num_warps is chosen so that each thread loads about this many bytes of the tile
THREADS_PER_SM = 1024      # a persistent grid fills an SM up to this many threads (half of what it can hold,
                           # so that each thread may use up to 64 of the SM's 64k registers)
SHARED_BYTES_PER_SM = 192 * 1024   # ... and up to this much shared memory (an H100/H200 SM has 228 KiB), which
                                   # a prefetching loop uses: num_stages buffers of one tile per program
INTERPRETER_SMS = 2        # under the interpreter there are no SMs: a small grid still exercises the tile loop
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"   # read once, as triton does when decorating


class LaunchConfig(NamedTuple):
    """How a kernel is launched; what choose_config returns (given, no exercise)."""
    BLOCK_M: int            # rows per tile
    BLOCK_N: int            # columns per block: the whole (padded) row, or one step of the looped path
    num_warps: int          # 32 * num_warps threads share a tile
    num_stages: int         # > 1: the loop over tiles (or over blocks of a row) prefetches the next one
    looped: bool            # BLOCK_N < n_cols: the two-pass kernel
    programs_per_sm: int    # 0: one program per tile; k > 0: a persistent grid of k programs per SM
    split: bool = False     # looped rows, too few to fill the GPU: cut each row into chunks of BLOCK_N
                            # columns, one program per chunk, two kernels (the split strategy, given)


def choose_config(n_rows, n_cols, dtype, block_size=None):
    """The LaunchConfig for an (n_rows, n_cols) input of `dtype` (given, no exercise).

    Every choice serves one goal: enough bytes in flight to cover the memory
    latency (about a microsecond: at 4.8 TB/s, 36 KiB per SM), without running
    out of registers, and in programs small enough that several share an SM.
    The constants were checked by the H200 sweep (benchmarks/fused_bandwidth_gpu.py
    --tune; lesson text, section 10).
    BLOCK_N: the whole row rounded up to a power of two (tl.arange needs one) up
      to SINGLE_BLOCK_MAX; past it the looped kernel walks the row in steps of
      half the padded row, at most LOOP_BLOCK_SIZE. On the H200, rows of 16k
      ran faster in two steps of 8k (0.83-0.97 of the copy) than whole in
      registers (0.78-0.84: a 16k row at 16 warps is one or two programs per SM,
      with little to overlap), and rows of 32k and 64k faster in 16k steps than
      in 8k ones (0.70-0.92 against 0.51-0.85).
      `block_size` forces the block width (a power of two): rows longer than it
      take the looped strategy (how the tests reach it on small inputs).
    BLOCK_M: short rows are packed into one tile until it holds TILE_BYTES of x
      (a program of 2048-element bf16 rows moves 4 rows, 16 KiB, not 4 KiB), but
      rows of 1024+ elements at most MAX_ROWS_PER_PROGRAM to a tile: on the H200
      8 rows of 1024 bf16 values ran at 0.73-0.79 of the copy, 4 rows at 0.89.
    num_warps: about BYTES_PER_THREAD = 64 bytes of x per thread (four 16-byte
      loads), 4 to 32 warps. The first H200 sweep showed this is the lever that
      matters: with 16 values a thread (32 bytes in bf16, 64 in float32) bf16
      rows of 1k-8k ran at 0.70 of the copy and float32 ones at 0.85-0.95; with
      64 bytes a thread both reach 0.88-0.93. Fewer, smaller programs also wait
      less at their reductions' barriers.
    programs_per_sm, num_stages: when the tiles outnumber what the SMs hold at
      once (THREADS_PER_SM / (32 num_warps) programs each), a persistent grid of
      that many programs per SM walks them, and with num_stages = 2 each program
      loads its next tile while it reduces this one: no tail of a part-filled last
      wave, and no gap between one program's end and the next one's first load.
      With fewer tiles, one program per tile. The looped kernel does not
      prefetch (num_stages = 1): on the H200 its pipelined form was slower at
      every length (0.47-0.75 of the copy against 0.51-0.85 for 8k steps).
    split: looped rows fewer than the SMs (64 rows of 64k: 64 programs for 132
      SMs) are cut into chunks of SPLIT_CHUNK columns, a program each with
      SPLIT_WARPS warps (split_rows_softmax below), when block_size is not forced.
    """
    whole_row = triton.next_power_of_2(max(n_cols, 1))
    if block_size is not None:
        BLOCK_N = min(block_size, whole_row)               # never a block wider than the row needs
    elif whole_row <= SINGLE_BLOCK_MAX:
        BLOCK_N = whole_row
    else:
        BLOCK_N = min(LOOP_BLOCK_SIZE, whole_row // 2)     # at least two steps
    looped = BLOCK_N < n_cols
    itemsize = dtype.itemsize
    if looped and block_size is None and n_rows < _sm_count():
        return LaunchConfig(1, SPLIT_CHUNK, SPLIT_WARPS, 1, True, 0, True)
    if looped:
        BLOCK_M = 1                                        # a long row is enough work for a program
    else:
        max_rows = MAX_ROWS_PER_PROGRAM if whole_row >= 1024 else 16
        BLOCK_M = max(1, min(max_rows, TILE_BYTES // (BLOCK_N * itemsize),
                             triton.next_power_of_2(max(n_rows, 1))))
    tile_bytes = BLOCK_M * BLOCK_N * itemsize
    num_warps = min(32, max(4, tile_bytes // (BYTES_PER_THREAD * 32)))
    if looped:
        return LaunchConfig(BLOCK_M, BLOCK_N, num_warps, 1, True, 0)
    per_sm = persistent_programs_per_sm(tile_bytes, num_warps, 2)
    if per_sm and triton.cdiv(max(n_rows, 1), BLOCK_M) > per_sm * _sm_count():
        return LaunchConfig(BLOCK_M, BLOCK_N, num_warps, 2, False, per_sm)
    return LaunchConfig(BLOCK_M, BLOCK_N, num_warps, 1, False, 0)


def persistent_programs_per_sm(tile_bytes, num_warps, num_stages):
    """Programs of a persistent grid per SM (given): as many as fit at once, by threads
    (THREADS_PER_SM) and, when the loop prefetches, by shared memory (num_stages
    buffers of a tile each). 0: not even one fits; do not prefetch then. A persistent
    grid larger than what fits would leave programs waiting for a free SM, each with a
    long list of tiles: the very tail the grid was meant to remove."""
    by_threads = max(1, THREADS_PER_SM // (32 * num_warps))
    if num_stages <= 1:
        return by_threads
    return min(by_threads, SHARED_BYTES_PER_SM // (num_stages * tile_bytes))


def launch_grid(n_rows, config, device=None):
    """The grid for `config` (given): one program per tile, or a persistent grid."""
    n_tiles = triton.cdiv(n_rows, config.BLOCK_M)
    if config.programs_per_sm <= 0:
        return (n_tiles,)
    return (max(1, min(n_tiles, config.programs_per_sm * _sm_count(device))),)


def row_alignment(n_cols, *row_strides, itemsize):
    """ALIGN for the kernels (given): the largest power of two, up to one 16-byte vector (16 // itemsize
    elements), that divides n_cols and every row stride. Triton assumes an integer argument is a
    multiple of 16 only when it is; 3000 is a multiple of 8, which is all a 16-byte bf16 load needs."""
    align = 16 // itemsize
    while align > 1 and any(v % align for v in (n_cols, *row_strides)):
        align //= 2
    return align


@functools.lru_cache(maxsize=None)
def _sm_count(device=None):
    """Streaming multiprocessors of the GPU (INTERPRETER_SMS on the CPU), asked once per device."""
    if INTERPRETED or not torch.cuda.is_available():
        return INTERPRETER_SMS
    return torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device()
                                            ).multi_processor_count


def _device_of(x):
    """Launch on x's GPU (Triton launches on the *current* device; given)."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


# --------------------------------------------------------------------------
# Softmax
# --------------------------------------------------------------------------

@triton.jit
def softmax_kernel(out_ptr, x_ptr, n_rows, n_cols, stride_xm, stride_om,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
                   ALIGN: tl.constexpr):
    """Single block. The rows are cut into tiles of BLOCK_M whole rows; program
    pid takes tiles pid, pid + G, pid + 2G, ... (G = the number of programs: one
    tile each when G = the number of tiles, several for a persistent grid).
    BLOCK_N (a power of two) >= n_cols.

    x_ptr, out_ptr: (n_rows, n_cols) matrices with unit column stride and row
    strides stride_xm, stride_om (in elements). Rows past n_rows and columns
    past n_cols must be masked. Per row, in float32:
        out = exp(x - max) / sum(exp(x - max)),
    stored in out's dtype; a row that is entirely -inf gives zeros (not NaN).
    NUM_STAGES: the tile loop's pipelining depth (tl.range(..., num_stages=NUM_STAGES);
    1: none, 2: the next tile is loaded while this one is reduced). ALIGN: n_cols,
    stride_xm and stride_om are multiples of it (row_alignment; 1 promises nothing).
    Reads x once, writes out once."""
    ### BEGIN SOLUTION
    # -- n_cols and the row strides are multiples of ALIGN elements (the wrapper checked). Rewriting each
    #    as (v // ALIGN) * ALIGN changes no value but lets Triton prove it, so the masks and the addresses
    #    are uniform over ALIGN columns and it loads 16 bytes at a time. Triton itself assumes only
    #    multiples of 16: without this, a row of 3000 bf16 values is read 2 bytes per instruction --
    n_cols = (n_cols // ALIGN) * ALIGN
    stride_xm = (stride_xm // ALIGN) * ALIGN
    stride_om = (stride_om // ALIGN) * ALIGN
    offs_n = tl.arange(0, BLOCK_N)                                      # (BLOCK_N,) the whole row, padded
    col_mask = offs_n < n_cols                                          # the tail of the row
    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    # -- the tile loop: runs once per program on a grid of n_tiles, several times on a persistent grid.
    #    NUM_STAGES > 1 asks Triton to load the next tile while this one is reduced (software pipelining) --
    for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)                 # (BLOCK_M,) this tile's rows
        mask = (offs_m[:, None] < n_rows) & col_mask[None, :]           # (BLOCK_M, BLOCK_N): the tail, the last rows
        rows = offs_m.to(tl.int64)[:, None]                             # int64: rows * stride may pass 2^31
        # -- load: the ONE read of x. Padding reads as -inf, so it adds exp(-inf) = 0 to the sum.
        #    evict_first: x is read once, so it should not push other data out of L2 --
        x = tl.load(x_ptr + rows * stride_xm + offs_n[None, :], mask=mask, other=float("-inf"),
                    eviction_policy="evict_first")
        x = x.to(tl.float32)                                            # half inputs: statistics in float32
        # -- m_i: row max. Subtracting it makes every exponent <= 0: nothing overflows --
        m_i = tl.max(x, axis=1)                                         # (BLOCK_M,)
        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)                  # all -inf row: avoid -inf - (-inf) = nan
        # -- p and l_i: exponentials and their row sum, all in registers --
        p = tl.math.exp2((x - m_i[:, None]) * LOG2E)                    # e^(x-m) = 2^((x-m) log2 e), x - m first
        l_i = tl.sum(p, axis=1)                                         # (BLOCK_M,), >= 1 unless the row is empty
        inv_l = 1.0 / tl.where(l_i > 0.0, l_i, 1.0)                     # empty row: p is all 0, 0 * 1 = 0
        # -- epilogue: the ONE write, in out's dtype; nothing here reads it again soon --
        out = p * inv_l[:, None]
        tl.store(out_ptr + rows * stride_om + offs_n[None, :], out.to(out_ptr.dtype.element_ty), mask=mask,
                 eviction_policy="evict_first")
    ### END SOLUTION


@triton.jit
def softmax_looped_kernel(out_ptr, x_ptr, n_rows, n_cols, stride_xm, stride_om,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
                          ALIGN: tl.constexpr):
    """Looped (online) softmax, same arguments, tiles and result as
    softmax_kernel, for rows longer than one block (BLOCK_N < n_cols): walk each
    row in blocks of BLOCK_N. Pass 1 computes the max and the sum TOGETHER, in
    one read: a running max m_i and a running sum l_i of exp(x - m_i), l_i
    rescaled by exp(m_old - m_new) whenever the max grows. Pass 2 writes
    exp(x - m_i) / l_i. Reads x twice (no more), writes out once. NUM_STAGES
    applies to the two loops along the row (2: the next block is prefetched)."""
    ### BEGIN SOLUTION
    n_cols = (n_cols // ALIGN) * ALIGN                                  # as in softmax_kernel: the same
    stride_xm = (stride_xm // ALIGN) * ALIGN                            # values, provably multiples of ALIGN,
    stride_om = (stride_om // ALIGN) * ALIGN                            # so 16-byte loads
    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)                 # (BLOCK_M,)
        row_mask = offs_m < n_rows
        rows = offs_m.to(tl.int64)[:, None]
        x_rows = x_ptr + rows * stride_xm                               # (BLOCK_M, 1) row starts
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)             # running max
        l_i = tl.zeros([BLOCK_M], tl.float32)                           # running sum of exp(x - m_i)
        # -- pass 1 (read 1 of 2): max and sum in one sweep. evict_last: keep x in L2 for pass 2 --
        for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):   # NUM_STAGES: prefetch the next block
            offs_n = start + tl.arange(0, BLOCK_N)
            mask = row_mask[:, None] & (offs_n[None, :] < n_cols)
            x = tl.load(x_rows + offs_n[None, :], mask=mask, other=float("-inf"),
                        eviction_policy="evict_last").to(tl.float32)
            m_new = tl.maximum(m_i, tl.max(x, axis=1))                  # (BLOCK_M,)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)      # nothing finite yet: keep exps at 0
            alpha = tl.math.exp2((m_i - m_safe) * LOG2E)                # rescale the old sum to the new max
            l_i = l_i * alpha + tl.sum(tl.math.exp2((x - m_safe[:, None]) * LOG2E), axis=1)
            m_i = m_new
        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)                  # all -inf row
        inv_l = 1.0 / tl.where(l_i > 0.0, l_i, 1.0)
        # -- pass 2 (read 2 of 2): normalise and write. x is not needed after this: evict_first --
        out_rows = out_ptr + rows * stride_om
        for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):   # NUM_STAGES: prefetch the next block
            offs_n = start + tl.arange(0, BLOCK_N)
            mask = row_mask[:, None] & (offs_n[None, :] < n_cols)
            x = tl.load(x_rows + offs_n[None, :], mask=mask, other=float("-inf"),
                        eviction_policy="evict_first").to(tl.float32)
            out = tl.math.exp2((x - m_i[:, None]) * LOG2E) * inv_l[:, None]
            tl.store(out_rows + offs_n[None, :], out.to(out_ptr.dtype.element_ty), mask=mask,
                     eviction_policy="evict_first")
    ### END SOLUTION


def triton_softmax(x, block_size=None):
    """softmax(x) over the last dim, in one fused Triton kernel.

    x: float32/float16/bfloat16 tensor with >= 1 dim, on CUDA (or on the CPU
    under TRITON_INTERPRET=1). Returns a new tensor of x's shape and dtype;
    the arithmetic is float32. A row that is entirely -inf gives zeros.
    block_size: None (the fast default, choose_config: whole rows up to
    SINGLE_BLOCK_MAX elements, longer rows in LOOP_BLOCK_SIZE blocks), or a
    power of two in [16, MAX_BLOCK_SIZE] that forces the block width: rows
    longer than it take the looped two-pass path. The result does not depend on it.
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
    config = choose_config(n_rows, n_cols, x.dtype, block_size)
    if config.split:                                                    # few long rows: the given split path
        return split_rows_softmax(out, x2, config).view(x.shape)
    kernel = softmax_looped_kernel if config.looped else softmax_kernel
    with _device_of(x):
        kernel[launch_grid(n_rows, config, x.device)](
            out, x2, n_rows, n_cols, x2.stride(0), out.stride(0),
            BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, NUM_STAGES=config.num_stages,
            ALIGN=row_alignment(n_cols, x2.stride(0), out.stride(0), itemsize=x.element_size()),
            num_warps=config.num_warps)
    return out.view(x.shape)
    ### END SOLUTION


# --------------------------------------------------------------------------
# Layer norm
# --------------------------------------------------------------------------

@triton.jit
def layer_norm_kernel(out_ptr, x_ptr, w_ptr, b_ptr, n_rows, n_cols, stride_xm, stride_om, eps,
                      HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
                      ALIGN: tl.constexpr):
    """Single block, laid out as softmax_kernel (tiles of BLOCK_M whole rows,
    program pid takes tiles pid, pid + G, ...). Per row, in float32 over the
    n_cols real columns:
        mean = sum(x) / n,  var = sum((x - mean)^2) / n (biased),  rstd = 1 / sqrt(var + eps),
        out = (x - mean) * rstd * w + b,
    w, b: (n_cols,) read through w_ptr, b_ptr only when HAS_WEIGHT / HAS_BIAS.
    Reads x once (and w, b once per tile), writes out once."""
    ### BEGIN SOLUTION
    n_cols = (n_cols // ALIGN) * ALIGN                                  # as in softmax_kernel: the same
    stride_xm = (stride_xm // ALIGN) * ALIGN                            # values, provably multiples of ALIGN,
    stride_om = (stride_om // ALIGN) * ALIGN                            # so 16-byte loads
    offs_n = tl.arange(0, BLOCK_N)                                      # (BLOCK_N,)
    col_mask = offs_n < n_cols
    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)                 # (BLOCK_M,)
        mask = (offs_m[:, None] < n_rows) & col_mask[None, :]           # (BLOCK_M, BLOCK_N)
        rows = offs_m.to(tl.int64)[:, None]
        # -- load: the one read of x; padding reads as 0 so it adds nothing to the sum --
        x = tl.load(x_ptr + rows * stride_xm + offs_n[None, :], mask=mask, other=0.0,
                    eviction_policy="evict_first").to(tl.float32)
        # -- statistics: two passes over the row, but over registers, not memory --
        mean = tl.sum(x, axis=1) / n_cols                               # (BLOCK_M,)
        xc = tl.where(mask, x - mean[:, None], 0.0)                     # padding would add (0 - mean)^2
        var = tl.sum(xc * xc, axis=1) / n_cols                          # biased, as nn.LayerNorm
        rstd = 1.0 / tl.sqrt(var + eps)                                 # eps inside the root
        y = xc * rstd[:, None]                                          # x_hat, (BLOCK_M, BLOCK_N)
        # -- affine: the same w and b for every row of the tile. Loaded here, per tile, not once before the
        #    loop: kept for the whole loop they would take two more registers per value of a row (128 a
        #    thread at 16k columns, one program per SM), and they come from L2 anyway (n_cols values) --
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            y = y + tl.load(b_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows * stride_om + offs_n[None, :], y.to(out_ptr.dtype.element_ty), mask=mask,
                 eviction_policy="evict_first")
    ### END SOLUTION


@triton.jit
def layer_norm_looped_kernel(out_ptr, x_ptr, w_ptr, b_ptr, n_rows, n_cols, stride_xm, stride_om, eps,
                             HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
                             ALIGN: tl.constexpr):
    """Looped layer norm for rows longer than one block (same tiles as
    layer_norm_kernel). Pass 1 gets the mean and the variance TOGETHER, in one
    read: it merges per-block statistics (count n_b, mean_b, M2_b = sum of
    squared deviations from mean_b) into running ones with Chan et al.'s rule,
    stable like a two-pass variance (sum(x^2) - n mean^2 is not):
        n = n_a + n_b,  delta = mean_b - mean_a,
        mean = mean_a + delta * n_b / n,   M2 = M2_a + M2_b + delta^2 * n_a * n_b / n.
    Pass 2 writes (x - mean) * rstd * w + b. Reads x twice (no more), writes out once."""
    ### BEGIN SOLUTION
    n_cols = (n_cols // ALIGN) * ALIGN                                  # as in softmax_kernel: the same
    stride_xm = (stride_xm // ALIGN) * ALIGN                            # values, provably multiples of ALIGN,
    stride_om = (stride_om // ALIGN) * ALIGN                            # so 16-byte loads
    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = offs_m < n_rows
        rows = offs_m.to(tl.int64)[:, None]
        x_rows = x_ptr + rows * stride_xm
        mean = tl.zeros([BLOCK_M], tl.float32)                          # running mean of the blocks so far
        m2 = tl.zeros([BLOCK_M], tl.float32)                            # running sum of (x - mean)^2
        # -- pass 1 (read 1 of 2): mean and M2 in one sweep; evict_last keeps x in L2 for pass 2 --
        for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):   # NUM_STAGES: prefetch the next block
            offs_n = start + tl.arange(0, BLOCK_N)
            col_mask = offs_n < n_cols
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(x_rows + offs_n[None, :], mask=mask, other=0.0,
                        eviction_policy="evict_last").to(tl.float32)
            n_b = tl.sum(col_mask.to(tl.float32), axis=0)               # columns in this block: BLOCK_N but at the tail
            mean_b = tl.sum(x, axis=1) / n_b
            xc = tl.where(mask, x - mean_b[:, None], 0.0)
            m2_b = tl.sum(xc * xc, axis=1)
            n_a = start * 1.0                                           # columns merged so far (all full blocks)
            n_ab = n_a + n_b
            delta = mean_b - mean
            mean = mean + delta * (n_b / n_ab)
            m2 = m2 + m2_b + delta * delta * (n_a * n_b / n_ab)
        rstd = 1.0 / tl.sqrt(m2 / n_cols + eps)                         # biased variance = M2 / n
        # -- pass 2 (read 2 of 2): normalise and write --
        out_rows = out_ptr + rows * stride_om
        for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):   # NUM_STAGES: prefetch the next block
            offs_n = start + tl.arange(0, BLOCK_N)
            col_mask = offs_n < n_cols
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(x_rows + offs_n[None, :], mask=mask, other=0.0,
                        eviction_policy="evict_first").to(tl.float32)
            y = (x - mean[:, None]) * rstd[:, None]
            if HAS_WEIGHT:
                y = y * tl.load(w_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            if HAS_BIAS:
                y = y + tl.load(b_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            tl.store(out_rows + offs_n[None, :], y.to(out_ptr.dtype.element_ty), mask=mask,
                     eviction_policy="evict_first")
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
    config = choose_config(n_rows, n_cols, x.dtype, block_size)
    w = weight.contiguous() if weight is not None else x2                # a dummy pointer when absent:
    b = bias.contiguous() if bias is not None else x2                    # HAS_WEIGHT=False never reads it
    if config.split:                                                    # few long rows: the given split path
        return split_rows_layer_norm(out, x2, w, b, float(eps), weight is not None, bias is not None,
                                     config).view(x.shape)
    kernel = layer_norm_looped_kernel if config.looped else layer_norm_kernel
    with _device_of(x):
        kernel[launch_grid(n_rows, config, x.device)](
            out, x2, w, b, n_rows, n_cols, x2.stride(0), out.stride(0), float(eps),
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
            BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, NUM_STAGES=config.num_stages,
            ALIGN=row_alignment(n_cols, x2.stride(0), out.stride(0), itemsize=x.element_size()),
            num_warps=config.num_warps)
    return out.view(x.shape)
    ### END SOLUTION


# --------------------------------------------------------------------------
# The split strategy (given, no exercise): few long rows
# --------------------------------------------------------------------------
# With one program per row, 64 rows of 64k columns keep 64 of the H200's 132
# SMs busy and the rest idle (0.25-0.4 of the copy's bandwidth). Cut each row
# into chunks of BLOCK_N columns instead, one program per (row, chunk), in two
# kernels: the first reduces each chunk to its statistics (softmax: its max and
# its sum of exponentials; layer norm: its mean and its sum of squared
# deviations) in a small float32 buffer stats (n_rows, n_chunks, 2); the second
# merges a row's chunk statistics, which every program of the row does for
# itself (a handful of values), and normalises its chunk. x is read twice, as
# in the looped kernel; the second read comes from L2 when the rows fit in it,
# which is the case this path is chosen for (fewer rows than SMs). Each chunk is
# one block in registers: no loop, no running statistics.

@triton.jit
def softmax_chunk_stats_kernel(stats_ptr, x_ptr, n_cols, stride_xm, n_chunks, BLOCK_N: tl.constexpr):
    """Program (row, chunk): over columns [chunk * BLOCK_N, (chunk + 1) * BLOCK_N) of one row,
    m_c = max(x) and l_c = sum(exp(x - m_c)), stored at stats[row, chunk] (float32)."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_n = chunk * BLOCK_N + tl.arange(0, BLOCK_N)                    # (BLOCK_N,) this chunk's columns
    mask = offs_n < n_cols
    # -- read 1 of 2; evict_last: the second kernel reads this chunk again, from L2 --
    x = tl.load(x_ptr + row.to(tl.int64) * stride_xm + offs_n, mask=mask, other=float("-inf"),
                eviction_policy="evict_last").to(tl.float32)
    m_c = tl.max(x, axis=0)
    m_safe = tl.where(m_c == float("-inf"), 0.0, m_c)                   # an all -inf chunk: l_c = 0, not nan
    l_c = tl.sum(tl.math.exp2((x - m_safe) * LOG2E), axis=0)
    slot = stats_ptr + (row * n_chunks + chunk) * 2
    tl.store(slot, m_c)
    tl.store(slot + 1, l_c)


@triton.jit
def softmax_chunk_normalize_kernel(out_ptr, x_ptr, stats_ptr, n_cols, stride_xm, stride_om, n_chunks,
                                   BLOCK_N: tl.constexpr, CHUNKS: tl.constexpr):
    """Program (row, chunk): the row's max m = max_c m_c and sum l = sum_c l_c exp(m_c - m)
    (each chunk's sum rescaled from its own max to the row's, as the online softmax does),
    then out = exp(x - m) / l over this chunk. CHUNKS: n_chunks rounded up to a power of two."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_c = tl.arange(0, CHUNKS)                                       # (CHUNKS,) the row's chunks
    slots = stats_ptr + (row * n_chunks + offs_c) * 2
    m_c = tl.load(slots, mask=offs_c < n_chunks, other=float("-inf"))
    l_c = tl.load(slots + 1, mask=offs_c < n_chunks, other=0.0)
    m = tl.max(m_c, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)                            # an all -inf row gives zeros
    # chunks with l_c = 0 (all -inf, or padding) add nothing; the others have m_c <= m: no overflow
    l = tl.sum(tl.where(l_c > 0.0, l_c * tl.math.exp2((m_c - m) * LOG2E), 0.0), axis=0)
    inv_l = 1.0 / tl.where(l > 0.0, l, 1.0)
    offs_n = chunk * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs_n < n_cols
    # -- read 2 of 2 (from L2), and the one write --
    x = tl.load(x_ptr + row.to(tl.int64) * stride_xm + offs_n, mask=mask, other=float("-inf"),
                eviction_policy="evict_first").to(tl.float32)
    out = tl.math.exp2((x - m) * LOG2E) * inv_l
    tl.store(out_ptr + row.to(tl.int64) * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=mask,
             eviction_policy="evict_first")


@triton.jit
def layer_norm_chunk_stats_kernel(stats_ptr, x_ptr, n_cols, stride_xm, n_chunks, BLOCK_N: tl.constexpr):
    """Program (row, chunk): the chunk's mean_c and M2_c = sum((x - mean_c)^2) over its n_c real
    columns, stored at stats[row, chunk] (float32)."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_n = chunk * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs_n < n_cols
    x = tl.load(x_ptr + row.to(tl.int64) * stride_xm + offs_n, mask=mask, other=0.0,
                eviction_policy="evict_last").to(tl.float32)
    n_c = tl.sum(mask.to(tl.float32), axis=0)                           # BLOCK_N, or fewer in the last chunk
    mean_c = tl.sum(x, axis=0) / n_c
    xc = tl.where(mask, x - mean_c, 0.0)                                # padding would add mean_c^2
    slot = stats_ptr + (row * n_chunks + chunk) * 2
    tl.store(slot, mean_c)
    tl.store(slot + 1, tl.sum(xc * xc, axis=0))


@triton.jit
def layer_norm_chunk_normalize_kernel(out_ptr, x_ptr, w_ptr, b_ptr, stats_ptr, n_cols, stride_xm, stride_om,
                                      n_chunks, eps, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                                      BLOCK_N: tl.constexpr, CHUNKS: tl.constexpr):
    """Program (row, chunk): the row's statistics from its chunks' (Chan et al.'s merge, all
    chunks at once: the squared deviations within each chunk plus those of the chunk means),
        mean = sum_c n_c mean_c / n,   M2 = sum_c (M2_c + n_c (mean_c - mean)^2),
    then out = (x - mean) / sqrt(M2 / n + eps) * w + b over this chunk."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_c = tl.arange(0, CHUNKS)
    slots = stats_ptr + (row * n_chunks + offs_c) * 2
    mean_c = tl.load(slots, mask=offs_c < n_chunks, other=0.0)
    m2_c = tl.load(slots + 1, mask=offs_c < n_chunks, other=0.0)
    n_c = tl.minimum(tl.maximum(n_cols - offs_c * BLOCK_N, 0), BLOCK_N).to(tl.float32)   # 0 past the last chunk
    mean = tl.sum(n_c * mean_c, axis=0) / n_cols
    dev = mean_c - mean
    m2 = tl.sum(m2_c + n_c * dev * dev, axis=0)
    rstd = 1.0 / tl.sqrt(m2 / n_cols + eps)
    offs_n = chunk * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs_n < n_cols
    x = tl.load(x_ptr + row.to(tl.int64) * stride_xm + offs_n, mask=mask, other=0.0,
                eviction_policy="evict_first").to(tl.float32)
    y = (x - mean) * rstd
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + offs_n, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(b_ptr + offs_n, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row.to(tl.int64) * stride_om + offs_n, y.to(out_ptr.dtype.element_ty), mask=mask,
             eviction_policy="evict_first")


def split_rows_softmax(out, x2, config):
    """Softmax of the (n_rows, n_cols) x2 into out by the split strategy (given): two launches on a
    (n_rows, n_chunks) grid. Returns out."""
    n_rows, n_cols = x2.shape
    n_chunks = triton.cdiv(n_cols, config.BLOCK_N)
    stats = torch.empty((n_rows, n_chunks, 2), dtype=torch.float32, device=x2.device)
    with _device_of(x2):
        softmax_chunk_stats_kernel[(n_rows, n_chunks)](stats, x2, n_cols, x2.stride(0), n_chunks,
                                                       BLOCK_N=config.BLOCK_N, num_warps=config.num_warps)
        softmax_chunk_normalize_kernel[(n_rows, n_chunks)](
            out, x2, stats, n_cols, x2.stride(0), out.stride(0), n_chunks, BLOCK_N=config.BLOCK_N,
            CHUNKS=triton.next_power_of_2(n_chunks), num_warps=config.num_warps)
    return out


def split_rows_layer_norm(out, x2, w, b, eps, has_weight, has_bias, config):
    """Layer norm of x2 into out by the split strategy (given); w, b: pointers (dummies when absent)."""
    n_rows, n_cols = x2.shape
    n_chunks = triton.cdiv(n_cols, config.BLOCK_N)
    stats = torch.empty((n_rows, n_chunks, 2), dtype=torch.float32, device=x2.device)
    with _device_of(x2):
        layer_norm_chunk_stats_kernel[(n_rows, n_chunks)](stats, x2, n_cols, x2.stride(0), n_chunks,
                                                          BLOCK_N=config.BLOCK_N, num_warps=config.num_warps)
        layer_norm_chunk_normalize_kernel[(n_rows, n_chunks)](
            out, x2, w, b, stats, n_cols, x2.stride(0), out.stride(0), n_chunks, eps,
            HAS_WEIGHT=has_weight, HAS_BIAS=has_bias, BLOCK_N=config.BLOCK_N,
            CHUNKS=triton.next_power_of_2(n_chunks), num_warps=config.num_warps)
    return out


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

### END SOLUTION
