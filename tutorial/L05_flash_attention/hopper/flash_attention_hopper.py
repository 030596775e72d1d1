"""L05 appendix — a Hopper fast path for the FlashAttention kernels.

The same algorithm as L05's Triton kernels (flash_attention_triton.py of part 2:
query tiles over key tiles with an online softmax, a backward by recomputation
in three kernels), restricted to the shapes a model trains on so that every
tile is whole, and tuned for Hopper (H100, H200). Read the teaching kernel
first: this file only adds the steps below, each behind a compile-time switch
(`Steps`), so that `benchmarks/flash_attention_hopper_gpu.py --ablation` can
time them one by one.

    exp2            exponentials in base 2 with the scale folded into log2(e):
                    exp(s*x - m) = exp2(x * s*log2(e) - m'): one FMA and one MUFU.EX2
                    per score, where tl.exp adds a multiply by log2(e) before its EX2
    split_diagonal  causal: the key tiles wholly below the diagonal run a loop
                    with no mask at all; only the diagonal tiles are masked
    tma             tiles move through tensor descriptors (triton.tools.tensor_descriptor,
                    built on the host and passed as kernel parameters): Hopper's TMA
                    copy engine fetches a whole (rows, D) tile into shared memory with
                    one instruction, no address arithmetic in the warps, and the
                    pipeliner overlaps it with the matmuls
    persistent      one program per multiprocessor, each looping over work items
                    (tile, batch*head); causal tiles are paired heavy + light
                    (tile t with tile n-1-t) so every item costs the same
    warp_specialize tl.range(..., warp_specialize=True): Triton splits the loop into
                    a producer warp group (loads) and consumer warp groups (math)
    overlap         forward: the key loop rotated by half an iteration, so the next tile's
                    QK^T (asynchronous wgmma) runs while this tile's softmax is computed
    atomic_dq       backward: the dK/dV kernel also computes each tile's dQ share (dS K)
                    and adds it into a float32 dQ by TMA reductions, so QK^T and P are
                    built once, not twice (5 matmuls instead of 7); no dQ kernel

plus the tile table (`TILES`: BLOCK_M x BLOCK_N, warps, pipeline stages per
kernel, head dim and causal flag), picked by the benchmark's --sweep on an H200.

The subset it supports (anything else: `fallback`, or a ValueError naming the
argument):
    q (B, H, L, D), k and v (B, Hkv, L, D): self-attention, Lq == Lk == L
    L a multiple of 128 (every tile is whole: no tail masks, and a tile never
      runs into the next head's rows of the flattened (B*H*L, D) view)
    D in {64, 128}; float16 or bfloat16; GQA (H a multiple of Hkv); no window
    causal (bool) is the course's bottom-right alignment, which for Lq == Lk is
      the plain lower triangle
    on CUDA, a GPU of compute capability 9.0 or newer (TMA); or CPU tensors under
      TRITON_INTERPRET=1 (the CPU-only CI runs every switch there)
Every row sees at least its own key, so no row is fully masked here and the
lse is always finite.

Tested under the interpreter (Triton 3.9, every switch); on an H200 (Triton 3.6, torch 2.11) the
test file passed for an earlier version of this module, and the final version's benchmark checked
every rung's output and gradients against cuDNN at L = 8k (benchmarks/results/, max_err).
Nothing touches the CUDA driver at import time.
"""
import functools
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * log2(e)); exp2 is one MUFU instruction
LN2 = tl.constexpr(0.6931471805599453)    # ln(2): an lse in base 2 times ln(2) is the natural-log lse

# Triton reads TRITON_INTERPRET when it decorates a kernel (at import): read it once here too.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

SEQ_MULTIPLE = 128          # L must be a multiple of this (the largest tile edge in TILES)
HEAD_DIMS = (64, 128)


@dataclass(frozen=True)
class Steps:
    """Which of the appendix's steps are on. Steps() is the whole ladder up to the persistent
    schedule (the later steps are off: none paid on the H200); what a call runs by default is
    DEFAULT below, the best the H200 ablation measured for each head dim."""
    exp2: bool = True
    split_diagonal: bool = True
    tma: bool = True
    persistent: bool = True
    warp_specialize: bool = False
    atomic_dq: bool = False
    overlap: bool = False


@dataclass(frozen=True)
class Tile:
    block_m: int    # query rows per tile
    block_n: int    # key rows per tile
    warps: int      # num_warps: 8 = two warp groups of 4, each issuing its own wgmma
    stages: int     # num_stages: tiles in flight in the software pipeline (shared memory buffers)


FAST = Steps()

# (kernel, head dim, causal) -> Tile for the Hopper rungs of the ablation ("+tiles" on). Chosen from
# the register and spill counts of sm_90 builds (benchmarks/flash_attention_hopper_sass.py), NOT from
# timings: the H200 ablation then showed them slower than L05's table everywhere except the D = 128
# forward (see README.md). fwd: a query tile of 128 rows over key tiles; dkdv: a key tile over
# query tiles (BLOCK_N must be a multiple of BLOCK_M); dq: a query tile over key tiles (BLOCK_M a
# multiple of BLOCK_N).
TILES = {
    ("fwd", 64, False): Tile(128, 128, 8, 2), ("fwd", 64, True): Tile(128, 128, 8, 2),
    ("fwd", 128, False): Tile(128, 128, 8, 2), ("fwd", 128, True): Tile(128, 128, 8, 2),
    ("dkdv", 64, False): Tile(64, 128, 8, 2), ("dkdv", 64, True): Tile(64, 128, 8, 2),
    ("dkdv", 128, False): Tile(32, 128, 8, 2), ("dkdv", 128, True): Tile(32, 128, 8, 2),
    ("dq", 64, False): Tile(128, 64, 8, 2), ("dq", 64, True): Tile(128, 64, 8, 2),
    ("dq", 128, False): Tile(128, 64, 8, 2), ("dq", 128, True): Tile(128, 64, 8, 2),
    # the forward with its loop rotated (Steps.overlap): two score tiles live at once, so 64-key tiles
    ("fwd_overlap", 64, False): Tile(128, 64, 8, 3), ("fwd_overlap", 64, True): Tile(128, 64, 8, 3),
    ("fwd_overlap", 128, False): Tile(128, 64, 8, 3), ("fwd_overlap", 128, True): Tile(128, 64, 8, 3),
    # the dK/dV kernel when it also adds dQ (Steps.atomic_dq): one more accumulator-free matmul per step
    ("dkdv_atomic", 64, False): Tile(64, 128, 8, 2), ("dkdv_atomic", 64, True): Tile(64, 128, 8, 2),
    ("dkdv_atomic", 128, False): Tile(32, 128, 8, 2), ("dkdv_atomic", 128, True): Tile(32, 128, 8, 2),
}
PREPROCESS_ROWS = 128

# L05's tile table (solutions/flash_attention_triton.py GPU_TILES, swept on an H100), as overrides.
L05_TILES = {64: dict(fwd=Tile(128, 64, 8, 3), dkdv=Tile(32, 128, 4, 3), dq=Tile(128, 64, 8, 3)),
             128: dict(fwd=Tile(64, 64, 4, 3), dkdv=Tile(64, 128, 8, 3), dq=Tile(128, 64, 8, 3))}
POINTERS = Steps(tma=False, persistent=False)      # exp2 and the split diagonal, plain loads
# What a call runs when it names no steps: head dim -> ((forward steps, tiles), (backward steps, tiles)),
# each the fastest rung of the H200 ablation (float16, L = 8k, full and causal) for that pass:
#   D = 128 forward: TMA + persistent + 128 x 128 tiles ("+persistent", 482 / 442 TFLOP/s vs L05's 440 / 429)
#   D = 64 forward, and every backward: exp2 + split diagonal + L05's tiles ("+split_diag")
DEFAULT = {64: ((POINTERS, L05_TILES[64]), (POINTERS, L05_TILES[64])),
           128: ((FAST, None), (POINTERS, L05_TILES[128]))}


# ---------------------------------------------------------------------------
# Moving tiles: one (rows, D) tile of a (B*H*L, D) tensor, by TMA or by pointers.
# With TMA the kernels get tensor descriptors (built on the host, `_descriptor`)
# where they otherwise get pointers: the same argument, specialised by type.
# ---------------------------------------------------------------------------
@triton.jit
def _load(src, row, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, TMA: tl.constexpr):
    """Rows [row, row + BLOCK) of a (n_rows, HEAD_DIM) tensor: (BLOCK, HEAD_DIM).

    src: a tensor descriptor (TMA) whose tile is (BLOCK, HEAD_DIM), else a pointer to row 0."""
    if TMA:
        return src.load([row, 0])              # one TMA copy into shared memory, no address math
    else:
        rows = row.to(tl.int64) + tl.arange(0, BLOCK)
        return tl.load(src + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :])


@triton.jit
def _store(dst, row, x, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, TMA: tl.constexpr):
    if TMA:
        dst.store([row, 0], x)
    else:
        rows = row.to(tl.int64) + tl.arange(0, BLOCK)
        tl.store(dst + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], x)


@triton.jit
def _atomic_add(dst, row, x, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, TMA: tl.constexpr):
    """rows [row, row + BLOCK) += x, atomically (other programs add to the same rows)."""
    if TMA:
        dst.atomic_add([row, 0], x)            # a TMA reduction: the copy engine adds in L2
    else:
        rows = row.to(tl.int64) + tl.arange(0, BLOCK)
        tl.atomic_add(dst + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], x, sem="relaxed")


@triton.jit
def _work_item(item, n_tiles, CAUSAL: tl.constexpr):
    """Persistent schedule: work item -> (bh, first tile, second tile); second == first: none.

    Causal tiles differ in cost (query tile t of the forward sees t + 1 key tiles), so an item
    is the pair (t, n_tiles - 1 - t): every item costs n_tiles + 1 key tiles, and programs that
    take items in turn finish together. Full attention: one tile per item. Consecutive items
    share a head, so the programs running at one time read the same K, V from L2."""
    if CAUSAL:
        n_pairs = (n_tiles + 1) // 2
        bh = item // n_pairs
        first = item % n_pairs
        second = n_tiles - 1 - first      # == first for the middle tile of an odd n_tiles: run it once
    else:
        bh = item // n_tiles
        first = item % n_tiles
        second = first                    # no second tile
    return bh, first, second


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------
@triton.jit
def _online_softmax(acc, l_i, m_i, qk, v, offs_m, start_n, qk_scale,
                    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, EXP2: tl.constexpr):
    """Fold one key tile's raw scores qk (BLOCK_M, BLOCK_N) and values v (BLOCK_N, D) into the state."""
    if MASKED:   # the diagonal tile: key j visible from query i iff j <= i
        offs_n = start_n + tl.arange(0, BLOCK_N)
        qk = tl.where(offs_m[:, None] >= offs_n[None, :], qk, float("-inf"))
    # -- running max of the scaled scores; the first key tile always holds key 0, seen by every row,
    #    so m_new is finite and exp(-inf - m_new) = 0 needs no guard --
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    s = qk * qk_scale - m_new[:, None]                       # one FMA per score
    if EXP2:
        p = tl.math.exp2(s)
        alpha = tl.math.exp2(m_i - m_new)
    else:
        p = tl.exp(s)                                        # = exp2(s * log2 e): one more multiply
        alpha = tl.exp(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    # -- acc = acc * alpha + P V: (BLOCK_M, BLOCK_N) @ (BLOCK_N, D); P rounded to V's dtype --
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit
def _fwd_loop(acc, l_i, m_i, q, k_src, v_src, kv_row, start_m, lo, hi, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, EXP2: tl.constexpr, TMA: tl.constexpr, WARP_SPEC: tl.constexpr,
              OVERLAP: tl.constexpr):
    """Fold key tiles [lo, hi) into (acc, l_i, m_i) of the query tile at start_m.

    m_i is in the units of qk_scale: base 2 (qk_scale = sm_scale * log2 e) with EXP2, else natural.
    OVERLAP: the loop is rotated by half an iteration, so that tile j+1's QK^T is issued before tile
    j's softmax: wgmma is asynchronous, and the tensor cores multiply while the same warps compute
    exponentials (FlashAttention-3's intra-warpgroup overlap). It costs a second score tile in
    registers and one wasted QK^T on the last iteration."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    if OVERLAP:
        k = _load(k_src, kv_row + lo, BLOCK_N, HEAD_DIM, TMA)
        qk = tl.dot(q, tl.trans(k))                          # prologue: the first tile's scores
        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC):
            # -- the next tile's scores first (the last iteration recomputes its own tile and drops it) --
            k_next = _load(k_src, kv_row + tl.minimum(start_n + BLOCK_N, hi - BLOCK_N), BLOCK_N, HEAD_DIM, TMA)
            qk_next = tl.dot(q, tl.trans(k_next))
            v = _load(v_src, kv_row + start_n, BLOCK_N, HEAD_DIM, TMA)
            acc, l_i, m_i = _online_softmax(acc, l_i, m_i, qk, v, offs_m, start_n, qk_scale, BLOCK_N, MASKED, EXP2)
            qk = qk_next
    else:
        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC):
            # -- qk = q k^T: (BLOCK_M, D) @ (D, BLOCK_N) -> (BLOCK_M, BLOCK_N), still unscaled --
            k = _load(k_src, kv_row + start_n, BLOCK_N, HEAD_DIM, TMA)
            qk = tl.dot(q, tl.trans(k))
            v = _load(v_src, kv_row + start_n, BLOCK_N, HEAD_DIM, TMA)
            acc, l_i, m_i = _online_softmax(acc, l_i, m_i, qk, v, offs_m, start_n, qk_scale, BLOCK_N, MASKED, EXP2)
    return acc, l_i, m_i


@triton.jit
def _fwd_tile(tile, bh, q_src, k_src, v_src, o_src, LSE, H, GROUP, L, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
              EXP2: tl.constexpr, SPLIT_DIAG: tl.constexpr, TMA: tl.constexpr, WARP_SPEC: tl.constexpr,
              OVERLAP: tl.constexpr):
    """Query rows [tile * BLOCK_M, +BLOCK_M) of (batch, head) bh: out and lse."""
    start_m = tile * BLOCK_M
    b = bh // H
    kv_bh = b * (H // GROUP) + (bh % H) // GROUP          # GQA: query head h reads kv head h // GROUP
    q_row = bh * L + start_m                               # rows of the flattened (B*H*L, D) view
    kv_row = kv_bh * L
    # -- q stays on chip for the whole loop --
    q = _load(q_src, q_row, BLOCK_M, HEAD_DIM, TMA)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        if SPLIT_DIAG:
            # -- tiles left of the diagonal: every (row, key) visible, no mask code at all --
            acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_src, v_src, kv_row, start_m, 0, start_m, qk_scale,
                                      HEAD_DIM, BLOCK_M, BLOCK_N, False, EXP2, TMA, WARP_SPEC, OVERLAP)
            # -- the diagonal tiles, masked --
            acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_src, v_src, kv_row, start_m, start_m,
                                      start_m + BLOCK_M, qk_scale,
                                      HEAD_DIM, BLOCK_M, BLOCK_N, True, EXP2, TMA, WARP_SPEC, OVERLAP)
        else:
            acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_src, v_src, kv_row, start_m, 0, start_m + BLOCK_M,
                                      qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, True, EXP2, TMA, WARP_SPEC, OVERLAP)
    else:
        acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_src, v_src, kv_row, start_m, 0, L, qk_scale,
                                  HEAD_DIM, BLOCK_M, BLOCK_N, False, EXP2, TMA, WARP_SPEC, OVERLAP)
    # epilogue: normalise once; lse in natural log, as the teaching kernel returns it
    if EXP2:
        lse = (m_i + tl.math.log2(l_i)) * LN2
    else:
        lse = m_i + tl.log(l_i)
    out = acc / l_i[:, None]
    _store(o_src, q_row, out.to(q.dtype), BLOCK_M, HEAD_DIM, TMA)
    tl.store(LSE + q_row + tl.arange(0, BLOCK_M), lse)    # LSE is (B*H*L,) like the row view


@triton.jit
def _fwd_kernel(Q, K, V, Out, LSE, H, GROUP, L, BH, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                EXP2: tl.constexpr, SPLIT_DIAG: tl.constexpr, TMA: tl.constexpr, PERSISTENT: tl.constexpr,
                WARP_SPEC: tl.constexpr, OVERLAP: tl.constexpr):
    """Q, Out: (B*H*L, D) rows in BLOCK_M tiles; K, V: (B*Hkv*L, D) in BLOCK_N tiles (descriptors or
    pointers, see `_load`); LSE (B*H*L,) float32. BH = B * H."""
    q_src, k_src, v_src, o_src = Q, K, V, Out
    n_tiles = L // BLOCK_M
    if PERSISTENT:
        if CAUSAL:
            n_items = BH * ((n_tiles + 1) // 2)
        else:
            n_items = BH * n_tiles
        for item in tl.range(tl.program_id(0), n_items, tl.num_programs(0)):
            bh, first, second = _work_item(item, n_tiles, CAUSAL)
            # one or two tiles; a loop rather than two calls keeps one copy of the tile's code
            for j in range(0, 1 + (second != first).to(tl.int32)):
                _fwd_tile(first + j * (second - first), bh, q_src, k_src, v_src, o_src, LSE, H, GROUP, L,
                          qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, EXP2, SPLIT_DIAG, TMA, WARP_SPEC, OVERLAP)
    else:
        tile = tl.program_id(0)
        if CAUSAL:                          # heaviest tiles first: the last wave is short ones
            tile = n_tiles - 1 - tile
        _fwd_tile(tile, tl.program_id(1), q_src, k_src, v_src, o_src, LSE, H, GROUP, L, qk_scale,
                  HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, EXP2, SPLIT_DIAG, TMA, WARP_SPEC, OVERLAP)


# ---------------------------------------------------------------------------
# Backward
#   P = exp2(qk * qk_scale - lse2)     lse2 = lse * log2(e) (or lse itself without EXP2)
#   dV = P^T dO    dP = dO V^T    dS = P * (dP - delta), delta = rowsum(dO * O)
#   dK = sm_scale * dS^T Q         dQ = sm_scale * dS K
# ---------------------------------------------------------------------------
@triton.jit
def _bwd_preprocess(Out, dOut, LSE, Delta, LSE2, n_rows,
                    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, EXP2: tl.constexpr):
    """delta = rowsum(dO * O) and the lse in the kernels' units, for BLOCK rows of the (B*H*L, D) views."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < n_rows
    offs = rows.to(tl.int64)[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    o = tl.load(Out + offs, mask=ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(dOut + offs, mask=ok[:, None], other=0.0).to(tl.float32)
    tl.store(Delta + rows, tl.sum(o * do, axis=1), mask=ok)
    lse = tl.load(LSE + rows, mask=ok, other=0.0)
    if EXP2:
        lse = lse * LOG2E       # once per row here, not once per (row, key tile) in both kernels
    tl.store(LSE2 + rows, lse, mask=ok)


@triton.jit
def _dkdv_loop(dk, dv, k, v, q_src, do_src, dq_src, LSE2, Delta, q_row0, start_n, lo, hi, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               MASKED: tl.constexpr, EXP2: tl.constexpr, TMA: tl.constexpr, WARP_SPEC: tl.constexpr,
               DQ_ATOMIC: tl.constexpr):
    """Add query tiles [lo, hi) of one query head (its rows start at q_row0) to this key tile's dK, dV."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    for start_m in tl.range(lo, hi, BLOCK_M, warp_specialize=WARP_SPEC):
        q = _load(q_src, q_row0 + start_m, BLOCK_M, HEAD_DIM, TMA)       # (BLOCK_M, D)
        do = _load(do_src, q_row0 + start_m, BLOCK_M, HEAD_DIM, TMA)     # (BLOCK_M, D)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        lse2 = tl.load(LSE2 + q_row0 + offs_m)
        delta = tl.load(Delta + q_row0 + offs_m)
        # -- P^T = exp(K Q^T * scale - lse): (BLOCK_N, D) @ (D, BLOCK_M) -> (BLOCK_N, BLOCK_M) --
        st = tl.dot(k, tl.trans(q)) * qk_scale - lse2[None, :]
        if EXP2:
            pt = tl.math.exp2(st)
        else:
            pt = tl.exp(st)
        if MASKED:
            pt = tl.where(offs_m[None, :] >= offs_n[:, None], pt, 0.0)
        # -- dV += P^T dO: (BLOCK_N, BLOCK_M) @ (BLOCK_M, D) --
        dv = tl.dot(pt.to(do.dtype), do, dv)
        # -- dP^T = V dO^T: (BLOCK_N, D) @ (D, BLOCK_M); dS^T = P^T * (dP^T - delta) --
        dst = pt * (tl.dot(v, tl.trans(do)) - delta[None, :])
        # -- dK += dS^T Q: (BLOCK_N, BLOCK_M) @ (BLOCK_M, D); sm_scale once in the epilogue --
        dst = dst.to(q.dtype)
        dk = tl.dot(dst, q, dk)
        if DQ_ATOMIC > 0:
            # -- this key tile's share of dQ = dS K: (BLOCK_M, BLOCK_N) @ (BLOCK_N, D), added in float32
            #    (sm_scale applied once on the host when every key tile has added its share) --
            _atomic_add(dq_src, q_row0 + start_m, tl.dot(tl.trans(dst), k), BLOCK_M, HEAD_DIM, DQ_ATOMIC == 2)
    return dk, dv


@triton.jit
def _dkdv_tile(tile, bkv, q_src, k_src, v_src, do_src, dk_src, dv_src, dq_src, LSE2, Delta, H, GROUP, L,
               sm_scale, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               EXP2: tl.constexpr, SPLIT_DIAG: tl.constexpr, TMA: tl.constexpr, WARP_SPEC: tl.constexpr,
               DQ_ATOMIC: tl.constexpr):
    """dK, dV for keys [tile * BLOCK_N, +BLOCK_N) of (batch, kv head) bkv, summed over its GROUP query
    heads in registers (no atomics)."""
    start_n = tile * BLOCK_N
    kv_row = bkv * L + start_n
    k = _load(k_src, kv_row, BLOCK_N, HEAD_DIM, TMA)   # K, V stay on chip; dK, dV accumulate in float32
    v = _load(v_src, kv_row, BLOCK_N, HEAD_DIM, TMA)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    hkv_count = H // GROUP
    b = bkv // hkv_count
    for g in range(GROUP):
        q_row0 = (b * H + (bkv % hkv_count) * GROUP + g) * L
        if CAUSAL:      # query i sees key j iff i >= j: query tiles from start_n on
            if SPLIT_DIAG:
                dk, dv = _dkdv_loop(dk, dv, k, v, q_src, do_src, dq_src, LSE2, Delta, q_row0, start_n,
                                    start_n, start_n + BLOCK_N, qk_scale,
                                    HEAD_DIM, BLOCK_M, BLOCK_N, True, EXP2, TMA, WARP_SPEC, DQ_ATOMIC)
                dk, dv = _dkdv_loop(dk, dv, k, v, q_src, do_src, dq_src, LSE2, Delta, q_row0, start_n,
                                    start_n + BLOCK_N, L, qk_scale,
                                    HEAD_DIM, BLOCK_M, BLOCK_N, False, EXP2, TMA, WARP_SPEC, DQ_ATOMIC)
            else:
                dk, dv = _dkdv_loop(dk, dv, k, v, q_src, do_src, dq_src, LSE2, Delta, q_row0, start_n,
                                    start_n, L, qk_scale,
                                    HEAD_DIM, BLOCK_M, BLOCK_N, True, EXP2, TMA, WARP_SPEC, DQ_ATOMIC)
        else:
            dk, dv = _dkdv_loop(dk, dv, k, v, q_src, do_src, dq_src, LSE2, Delta, q_row0, start_n, 0, L,
                                qk_scale,
                                HEAD_DIM, BLOCK_M, BLOCK_N, False, EXP2, TMA, WARP_SPEC, DQ_ATOMIC)
    _store(dk_src, kv_row, (dk * sm_scale).to(k.dtype), BLOCK_N, HEAD_DIM, TMA)
    _store(dv_src, kv_row, dv.to(v.dtype), BLOCK_N, HEAD_DIM, TMA)


@triton.jit
def _dkdv_kernel(Q, K, V, dOut, dK, dV, dQ32, LSE2, Delta, H, GROUP, L, BH, sm_scale, qk_scale,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                 EXP2: tl.constexpr, SPLIT_DIAG: tl.constexpr, TMA: tl.constexpr, PERSISTENT: tl.constexpr,
                 WARP_SPEC: tl.constexpr, DQ_ATOMIC: tl.constexpr):
    """Q, dOut in BLOCK_M-row tiles; K, V, dK, dV in BLOCK_N-row tiles (descriptors or pointers).
    dQ32: a zeroed float32 dQ, read only when DQ_ATOMIC is 1 (a pointer: tl.atomic_add) or 2 (a
    descriptor: TMA reductions; the interpreter has no TMA reduction, so it runs 1)."""
    BKV = BH // GROUP
    q_src, k_src, v_src, do_src, dk_src, dv_src, dq_src = Q, K, V, dOut, dK, dV, dQ32
    n_tiles = L // BLOCK_N
    if PERSISTENT:
        # key tile t sees n_tiles - t query tiles under causal: the same pairing balances it
        if CAUSAL:
            n_items = BKV * ((n_tiles + 1) // 2)
        else:
            n_items = BKV * n_tiles
        for item in tl.range(tl.program_id(0), n_items, tl.num_programs(0)):
            bkv, first, second = _work_item(item, n_tiles, CAUSAL)
            for j in range(0, 1 + (second != first).to(tl.int32)):
                _dkdv_tile(first + j * (second - first), bkv, q_src, k_src, v_src, do_src, dk_src, dv_src,
                           dq_src, LSE2, Delta, H, GROUP, L, sm_scale, qk_scale,
                           HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, EXP2, SPLIT_DIAG, TMA, WARP_SPEC, DQ_ATOMIC)
    else:
        # key tile 0 is the heaviest under causal: the natural order already hands it out first
        _dkdv_tile(tl.program_id(0), tl.program_id(1), q_src, k_src, v_src, do_src, dk_src, dv_src, dq_src,
                   LSE2, Delta, H, GROUP, L, sm_scale, qk_scale,
                   HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, EXP2, SPLIT_DIAG, TMA, WARP_SPEC, DQ_ATOMIC)


@triton.jit
def _dq_loop(dq, q, do, lse2, delta, k_src, v_src, kv_row, start_m, lo, hi, qk_scale,
             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             MASKED: tl.constexpr, EXP2: tl.constexpr, TMA: tl.constexpr, WARP_SPEC: tl.constexpr):
    """Add key tiles [lo, hi) to the dQ of the query tile at start_m."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC):
        k = _load(k_src, kv_row + start_n, BLOCK_N, HEAD_DIM, TMA)     # (BLOCK_N, D)
        v = _load(v_src, kv_row + start_n, BLOCK_N, HEAD_DIM, TMA)
        # -- P = exp(Q K^T * scale - lse): (BLOCK_M, D) @ (D, BLOCK_N) --
        s = tl.dot(q, tl.trans(k)) * qk_scale - lse2[:, None]
        if EXP2:
            p = tl.math.exp2(s)
        else:
            p = tl.exp(s)
        if MASKED:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        # -- dP = dO V^T: (BLOCK_M, D) @ (D, BLOCK_N); dS = P * (dP - delta) --
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        # -- dQ += dS K: (BLOCK_M, BLOCK_N) @ (BLOCK_N, D) --
        dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq


@triton.jit
def _dq_tile(tile, bh, q_src, k_src, v_src, do_src, dq_src, LSE2, Delta, H, GROUP, L, sm_scale, qk_scale,
             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
             EXP2: tl.constexpr, SPLIT_DIAG: tl.constexpr, TMA: tl.constexpr, WARP_SPEC: tl.constexpr):
    start_m = tile * BLOCK_M
    q_row = bh * L + start_m
    kv_row = ((bh // H) * (H // GROUP) + (bh % H) // GROUP) * L
    # -- this tile's Q, dO, lse and delta stay on chip for the whole loop --
    q = _load(q_src, q_row, BLOCK_M, HEAD_DIM, TMA)
    do = _load(do_src, q_row, BLOCK_M, HEAD_DIM, TMA)
    lse2 = tl.load(LSE2 + q_row + tl.arange(0, BLOCK_M))
    delta = tl.load(Delta + q_row + tl.arange(0, BLOCK_M))
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        if SPLIT_DIAG:
            dq = _dq_loop(dq, q, do, lse2, delta, k_src, v_src, kv_row, start_m, 0, start_m, qk_scale,
                          HEAD_DIM, BLOCK_M, BLOCK_N, False, EXP2, TMA, WARP_SPEC)
            dq = _dq_loop(dq, q, do, lse2, delta, k_src, v_src, kv_row, start_m, start_m, start_m + BLOCK_M,
                          qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, True, EXP2, TMA, WARP_SPEC)
        else:
            dq = _dq_loop(dq, q, do, lse2, delta, k_src, v_src, kv_row, start_m, 0, start_m + BLOCK_M,
                          qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, True, EXP2, TMA, WARP_SPEC)
    else:
        dq = _dq_loop(dq, q, do, lse2, delta, k_src, v_src, kv_row, start_m, 0, L, qk_scale,
                      HEAD_DIM, BLOCK_M, BLOCK_N, False, EXP2, TMA, WARP_SPEC)
    _store(dq_src, q_row, (dq * sm_scale).to(q.dtype), BLOCK_M, HEAD_DIM, TMA)


@triton.jit
def _dq_kernel(Q, K, V, dOut, dQ, LSE2, Delta, H, GROUP, L, BH, sm_scale, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               EXP2: tl.constexpr, SPLIT_DIAG: tl.constexpr, TMA: tl.constexpr, PERSISTENT: tl.constexpr,
               WARP_SPEC: tl.constexpr):
    """Q, dOut, dQ in BLOCK_M-row tiles; K, V in BLOCK_N-row tiles (descriptors or pointers)."""
    q_src, k_src, v_src, do_src, dq_src = Q, K, V, dOut, dQ
    n_tiles = L // BLOCK_M
    if PERSISTENT:
        if CAUSAL:
            n_items = BH * ((n_tiles + 1) // 2)
        else:
            n_items = BH * n_tiles
        for item in tl.range(tl.program_id(0), n_items, tl.num_programs(0)):
            bh, first, second = _work_item(item, n_tiles, CAUSAL)
            for j in range(0, 1 + (second != first).to(tl.int32)):
                _dq_tile(first + j * (second - first), bh, q_src, k_src, v_src, do_src, dq_src, LSE2, Delta,
                         H, GROUP, L, sm_scale, qk_scale,
                         HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, EXP2, SPLIT_DIAG, TMA, WARP_SPEC)
    else:
        tile = tl.program_id(0)
        if CAUSAL:
            tile = n_tiles - 1 - tile
        _dq_tile(tile, tl.program_id(1), q_src, k_src, v_src, do_src, dq_src, LSE2, Delta, H, GROUP, L,
                 sm_scale, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, EXP2, SPLIT_DIAG, TMA, WARP_SPEC)


# ---------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _sm_count(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _descriptor(x, rows):
    """A TMA descriptor of x's (B*H*L, D) row view, in tiles of (rows, D): shape, strides and tile
    shape, which the copy engine reads from the kernel's parameters (nothing built on the device)."""
    x2 = x.view(-1, x.shape[-1])
    return TensorDescriptor(x2, list(x2.shape), list(x2.stride()), [rows, x.shape[-1]])


def _launch(kernel, name, q, n_tiles, n_heads, causal, steps, tiles, tensors, *args, **extra):
    """kernel over n_tiles x n_heads tiles: a grid of one program per tile, or one per SM (persistent).

    tensors: (tensor, "m" or "n") for the kernel's leading tile arguments: its tile has BLOCK_M or
    BLOCK_N rows; with TMA each is passed as a descriptor, else as the tensor (a pointer). "dq": the
    atomic dQ buffer, a descriptor only for TMA reductions (DQ_ATOMIC == 2)."""
    D = q.shape[-1]
    tile = (tiles or {}).get(name) or TILES[(name, D, causal)]
    tensors = [_descriptor(x, tile.block_n if role == "n" else tile.block_m)
               if steps.tma and (role != "dq" or extra.get("DQ_ATOMIC") == 2) else x for x, role in tensors]
    n_tiles = n_tiles(tile)
    if steps.persistent:
        n_items = n_heads * ((n_tiles + 1) // 2 if causal else n_tiles)
        programs = 4 if INTERPRETED else _sm_count(q.device.index if q.device.index is not None else 0)
        grid = (max(1, min(n_items, programs)),)
    else:
        grid = (n_tiles, n_heads)
    kernel[grid](*tensors, *args, HEAD_DIM=D, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, CAUSAL=causal,
                 EXP2=steps.exp2, SPLIT_DIAG=steps.split_diagonal, TMA=steps.tma, PERSISTENT=steps.persistent,
                 WARP_SPEC=steps.warp_specialize, num_warps=tile.warps, num_stages=tile.stages, **extra)


def _scales(D, scale, steps):
    sm_scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    return sm_scale, sm_scale * LOG2E.value if steps.exp2 else sm_scale


def _forward(q, k, v, causal, scale, steps, tiles):
    B, H, L, D = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((B, H, L), device=q.device, dtype=torch.float32)
    if q.numel() == 0:
        return out, lse
    _, qk_scale = _scales(D, scale, steps)
    _launch(_fwd_kernel, "fwd_overlap" if steps.overlap else "fwd", q, lambda t: L // t.block_m, B * H, causal,
            steps, tiles, [(q, "m"), (k, "n"), (v, "n"), (out, "m")], lse, H, H // k.shape[1], L, B * H, qk_scale,
            OVERLAP=steps.overlap)
    return out, lse


def _backward(q, k, v, out, lse, grad_out, causal, scale, steps, tiles):
    B, H, L, D = q.shape
    Hkv = k.shape[1]
    if q.numel() == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    grad_out = grad_out.contiguous()
    sm_scale, qk_scale = _scales(D, scale, steps)
    delta = torch.empty_like(lse)
    lse2 = torch.empty_like(lse)
    _bwd_preprocess[(triton.cdiv(B * H * L, PREPROCESS_ROWS),)](
        out, grad_out, lse, delta, lse2, B * H * L, HEAD_DIM=D, BLOCK=PREPROCESS_ROWS, EXP2=steps.exp2)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    # atomic dQ: a float32 buffer that every key tile adds its share into (zeroed: one memset)
    dq32 = torch.zeros(q.shape, device=q.device, dtype=torch.float32) if steps.atomic_dq else dk
    _launch(_dkdv_kernel, "dkdv_atomic" if steps.atomic_dq else "dkdv", q, lambda t: L // t.block_n, B * Hkv,
            causal, steps, tiles,
            [(q, "m"), (k, "n"), (v, "n"), (grad_out, "m"), (dk, "n"), (dv, "n"), (dq32, "dq")],
            lse2, delta, H, H // Hkv, L, B * H, sm_scale, qk_scale,
            DQ_ATOMIC=0 if not steps.atomic_dq else 2 if steps.tma and not INTERPRETED else 1)
    if steps.atomic_dq:
        return (dq32 * sm_scale).to(q.dtype), dk, dv
    _launch(_dq_kernel, "dq", q, lambda t: L // t.block_m, B * H, causal, steps, tiles,
            [(q, "m"), (k, "n"), (v, "n"), (grad_out, "m"), (dq, "m")],
            lse2, delta, H, H // Hkv, L, B * H, sm_scale, qk_scale)
    return dq, dk, dv


def unsupported(q, k, v, causal=False, scale=None):
    """Why these inputs are outside this kernel's subset, as (argument, reason); None if they are inside.

    Raises for input no attention kernel accepts (wrong types, ranks, mismatched shapes)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be (batch, heads, seq, head_dim), got shape {tuple(x.shape)}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    (B, H, Lq, D), (Bk, Hkv, Lk, Dk) = q.shape, k.shape
    if Bk != B or Hkv < 1 or H % Hkv:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)}: the batch must agree and q's heads "
                         f"must be a multiple of k's (GQA)")
    if Dk != D:
        return "k", f"k's head_dim {Dk} differs from q's {D}"
    if tuple(v.shape) != tuple(k.shape):
        return "v", f"v {tuple(v.shape)} must have k's shape {tuple(k.shape)} (this kernel needs Dv == D)"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return "q", f"q's dtype {q.dtype} is not float16 or bfloat16"
    if D not in HEAD_DIMS:
        return "q", f"q's head_dim {D} is not one of {HEAD_DIMS}"
    if Lq != Lk:
        return "k", f"k's length {Lk} differs from q's {Lq} (this kernel is self-attention only)"
    if Lq % SEQ_MULTIPLE:
        return "q", f"q's length {Lq} is not a multiple of {SEQ_MULTIPLE}"
    if q.device.type == "cuda":
        if torch.cuda.get_device_capability(q.device)[0] < 9:
            return "q", f"q is on {torch.cuda.get_device_name(q.device)}: TMA needs compute capability >= 9.0"
    elif not INTERPRETED:
        return "q", f"q is on {q.device}: run on CUDA, or on CPU with TRITON_INTERPRET=1"
    return None


def _route(q, k, v, causal, scale, fallback):
    """None if the fast path takes these inputs; else the fallback's name is checked and a ValueError raised."""
    why = unsupported(q, k, v, causal, scale)
    if why is not None and fallback is None:
        name, reason = why
        raise ValueError(f"hopper_flash_attention: {reason} ({name}); pass fallback=triton_flash_attention "
                         f"to run L05's kernel for such inputs")
    return why


def _configs(head_dim, steps, tiles):
    """((forward steps, tiles), (backward steps, tiles)): DEFAULT, or the caller's for both passes."""
    if steps is None and tiles is None:
        return DEFAULT[head_dim]
    return (steps or FAST, tiles), (steps or FAST, tiles)


class HopperFlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, steps, tiles):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        fwd, bwd = _configs(q.shape[-1], steps, tiles)
        out, lse = _forward(q, k, v, causal, scale, *fwd)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (causal, scale, *bwd)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, grad_out, *ctx.args)
        return dq, dk, dv, None, None, None, None


def hopper_flash_attention_forward(q, k, v, causal=False, scale=None, *, fallback=None, steps=None, tiles=None):
    """(out, lse) as L05's triton_flash_attention_forward, for the subset in the module docstring.

    fallback: a function with triton_flash_attention_forward's signature, called for inputs outside
    the subset; None raises a ValueError naming the argument instead. steps, tiles: the ablation's
    switches (`Steps`) and tile overrides ({kernel name: Tile}); None: DEFAULT, the fastest measured."""
    if _route(q, k, v, causal, scale, fallback):
        return fallback(q, k, v, causal=causal, scale=scale)
    fwd, _ = _configs(q.shape[-1], steps, tiles)
    return _forward(q.contiguous(), k.contiguous(), v.contiguous(), causal, scale, *fwd)


def hopper_flash_attention(q, k, v, causal=False, scale=None, *, fallback=None, steps=None, tiles=None):
    """out as L05's triton_flash_attention (differentiable, Triton backward), for the module's subset.

    fallback: e.g. triton_flash_attention itself, called for inputs outside the subset (other head
    dims, tails, Lq != Lk, float32, windows are not taken at all); None raises a ValueError instead.
    steps, tiles: as in hopper_flash_attention_forward, for both passes."""
    if _route(q, k, v, causal, scale, fallback):
        return fallback(q, k, v, causal=causal, scale=scale)
    return HopperFlashAttentionFunction.apply(q, k, v, causal, scale, steps, tiles)
