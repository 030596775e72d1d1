"""L10 part 2 — split-KV decode attention in Triton (flash-decoding), GQA heads packed.

One decoding step: q (B, H, Lq, D) with Lq = 1 (up to a few, speculative
decoding) against a cache k, v (B, Hkv, T, D). Two kernels:

    stage 1   grid (S, B * Hkv, row blocks): program (s, b, hkv) reads the keys
              and values of split s of KV head hkv ONCE and attends to them with
              the G * Lq query rows that share them (G = H // Hkv query heads x
              Lq queries, packed into the rows of one tile). Writes a partial
              output (G * Lq, D) and its lse per split, in float32.
    stage 2   grid (B * H * Lq,): merges the S partials of one query row by
              their lse (L02's online softmax one level up) into out and lse.
              With S = 1 stage 1 writes the final result and stage 2 is skipped.

Why it is shaped like this (the lesson text has the numbers):
- Decoding reads every byte of the cache once and does 2 FLOPs with it (one
  multiply-add per score, one per output element): far below any GPU's
  FLOP/byte ratio, so time = bytes of K and V / memory bandwidth, and the
  kernel's job is to keep HBM busy. L05's kernel gives each (batch, head) one
  program with a 64-row query tile of which 1 row is used, re-reads the keys
  once per query head of a GQA group, and at small B * H launches too few
  programs to fill the GPU.
- Packing the G heads of a group into the rows fixes the first two: one
  program, one read of the group's keys, G (x Lq) useful rows of a 16..64-row
  tile (tl.dot needs at least 16 rows; the rest are padding, free here: the
  matmul units are idle anyway).
- Splitting the keys fixes the third: S splits give B * Hkv * S programs.
  choose_num_splits picks S so that there are a few programs per SM, without
  making splits so short that writing and merging the partials costs more
  than the extra parallelism wins.

Conventions (tutorial/CONVENTIONS.md, "Decode attention"): kv_lens (B,) int,
keys j >= kv_lens[b] do not exist; query i sits at kv_lens[b] - Lq + i and is
bottom-right causal there; query head h reads KV head h // G; a row that sees
no key gives out 0, lse -inf. lse is natural-log float32 (B, H, Lq). Requires
Dv == D (ValueError naming v), head_dim 1..256.

Where it runs: CUDA in float16, bfloat16, float32 (float32 matmuls in IEEE
precision), and CPU tensors under TRITON_INTERPRET=1 at small shapes (how the
CPU-only CI runs it). Tested on an H200 (Triton 3.6, torch 2.11) and under the
interpreter. Nothing here touches the CUDA driver at import time: the SM count
is read on the first call on a GPU.
"""
import functools
import math
import os

import torch
import triton
import triton.language as tl

from ._checks import check_kv_lens, check_num_splits, check_scale, check_tensor, check_triton_device, contiguous_last
from ._triton_constants import LN2, LOG2E  # tl.constexpr: visible inside the kernels; host code reads LOG2E.value

# Triton reads TRITON_INTERPRET when it decorates a kernel (at import): read it once here too.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


# ---------------------------------------------------------------------------
# Stage 1: one program = one split of one KV head, all G * Lq query rows of its group.
# ---------------------------------------------------------------------------
@triton.jit
def _split_kernel(Q, K, V, KV_LENS, O_PART, LSE_PART,
                  stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                  H, Hkv, Lq, T, S, chunk, qk_scale,
                  GROUP: tl.constexpr, HAS_LENS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Partial attention of query rows [row0, row0 + BLOCK_M) of KV group (b, hkv) over
    the keys [split * chunk, (split + 1) * chunk) that exist for row b.

    q is contiguous (B, H, Lq, D): query row (b, h, i) starts at ((b * H + h) * Lq + i) * D.
    The partials are contiguous (B, H, Lq, S, D) and (B, H, Lq, S); with S = 1 that is
    exactly the layout of out (B, H, Lq, D) and lse (B, H, Lq), so stage 1 can write
    the result directly. k, v may be strided views (a cache buffer sliced to T)."""
    split = tl.program_id(0)
    off_bkv = tl.program_id(1)
    off_b = off_bkv // Hkv
    off_hkv = off_bkv % Hkv
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM                                     # padding columns when D is not a power of 2
    # this (batch, KV head)'s keys and values: key n at k_base + n * stride_kn (+ d)
    k_base = K + off_b.to(tl.int64) * stride_kb + off_hkv.to(tl.int64) * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vb + off_hkv.to(tl.int64) * stride_vh
    ### BEGIN SOLUTION
    # -- which query rows this tile holds: row r = g * Lq + i is query i of head hkv * G + g --
    # (the interleaved GQA map: heads hkv*G .. hkv*G + G - 1 share KV head hkv, as repeat_interleave)
    offs_r = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    r_ok = offs_r < GROUP * Lq                                   # padding rows of the tile
    off_g = offs_r // Lq
    off_i = offs_r % Lq
    off_h = off_hkv * GROUP + off_g                              # (BLOCK_M,) query head of each row

    # -- this row's cache length and the key range of this split --
    if HAS_LENS:
        kv_len = tl.load(KV_LENS + off_b).to(tl.int32)           # ragged batch: row b has kv_len real keys
    else:
        kv_len = T
    lo = split * chunk
    hi = tl.minimum(lo + chunk, kv_len)                          # keys past kv_len do not exist
    pos = kv_len - Lq + off_i                                    # (BLOCK_M,) bottom-right: the last Lq positions

    # -- q stays in registers for the whole loop: (BLOCK_M, BLOCK_D), read once --
    row = (off_b * H + off_h).to(tl.int64) * Lq + off_i         # (BLOCK_M,) index of (b, h, i) in (B, H, Lq)
    q = tl.load(Q + row[:, None] * HEAD_DIM + offs_d[None, :], mask=r_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                 # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)        # running sum of exp2(s - m_i) v

    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_ok = offs_n < hi                                       # the split's (and the cache's) last tile
        # -- load K (BLOCK_N, BLOCK_D) and V (BLOCK_N, BLOCK_D): the only HBM traffic that matters --
        k = tl.load(k_base + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_base + offs_n[:, None].to(tl.int64) * stride_vn + offs_d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        # -- qk = q k^T * scale * log2(e): (BLOCK_M, D) @ (D, BLOCK_N) -> (BLOCK_M, BLOCK_N) --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        # -- mask: keys that exist in this split, and causal j <= pos (bites only when Lq > 1) --
        visible = n_ok[None, :] & (offs_n[None, :] <= pos[:, None])
        qk = tl.where(visible, qk, float("-inf"))
        # -- online softmax: new max; a row that has seen nothing yet keeps -inf, guarded to 0 --
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)    # exp2(-inf - (-inf)) would be NaN
        p = tl.math.exp2(qk - m_safe[:, None])                   # (BLOCK_M, BLOCK_N), 0 where hidden
        alpha = tl.math.exp2(m_i - m_safe)                       # rescales the old sums; 0 when m_i = -inf
        l_i = l_i * alpha + tl.sum(p, 1)
        # (BLOCK_M, BLOCK_N) @ (BLOCK_N, D) -> (BLOCK_M, D); P rounded to V's dtype, as in FlashAttention
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    # epilogue: normalised partial out and its natural-log lse; nothing seen -> out 0, lse -inf
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    tl.store(O_PART + (row[:, None] * S + split) * HEAD_DIM + offs_d[None, :], out.to(O_PART.dtype.element_ty),
             mask=r_ok[:, None] & d_ok[None, :])
    tl.store(LSE_PART + row * S + split, lse, mask=r_ok)
    ### END SOLUTION


# ---------------------------------------------------------------------------
# Stage 2: one program = one query row; merge its S partials by their lse.
# ---------------------------------------------------------------------------
@triton.jit
def _merge_kernel(O_PART, LSE_PART, Out, LSE, S,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """out = sum_s w_s out_s / sum_s w_s with w_s = exp(lse_s - max lse): exact, float32.
    One program per query row (b, h, i), row = (b * H + h) * Lq + i; the partials are
    (B, H, Lq, S, D) and (B, H, Lq, S) contiguous, out (B, H, Lq, D) and lse (B, H, Lq) too."""
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    ### BEGIN SOLUTION
    s_ok = offs_s < S
    # -- read S lse values and S partial outputs: S * (D + 1) float32, tiny next to the cache --
    lse_s = tl.load(LSE_PART + row * S + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse_s, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)             # every split empty: weights 0, not NaN
    w = tl.math.exp2((lse_s - m_safe) * LOG2E)   # 0 for an empty split (lse -inf)
    total = tl.sum(w, 0)
    o = tl.load(O_PART + (row * S + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
                mask=s_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)   # (BLOCK_S, BLOCK_D)
    o = tl.where(w[:, None] > 0, o, 0.0)                       # an empty split contributes exactly nothing
    total_safe = tl.where(total == 0.0, 1.0, total)
    out = tl.sum(w[:, None] * o, 0) / total_safe              # (BLOCK_D,)
    lse = tl.where(total == 0.0, float("-inf"), m_safe + tl.log(total_safe))
    tl.store(Out + row * HEAD_DIM + offs_d, out.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)
    tl.store(LSE + row, lse)
    ### END SOLUTION


# ---------------------------------------------------------------------------
# Launch configuration.
#   BLOCK_N  keys per loop step. 128 keys x 128 dims x 2 bytes = 32 KB of K and
#            32 KB of V per step: wide, coalesced loads, and num_stages = 3 of
#            them in shared memory (192 KB of the H200's 227 KB per block) so two
#            tiles are in flight while the third is multiplied: that keeps HBM busy.
#   BLOCK_M  query rows: G * Lq rounded up to a power of two, at least 16 (the
#            smallest tl.dot), at most 64 (more rows would spill the float32
#            accumulator; a larger group is cut into several row blocks).
# Measured on an H200 (bf16, D = 128; `benchmarks/decode_attention_gpu.py --sweep` and a
# probe of six shapes x six configs, 3 interleaved repeats, medians, recorded in
# benchmarks/results/decode_attention_gpu.txt): 128 keys / 8 warps / 3 stages is within
# 1 % of cuDNN on every bandwidth-bound shape (B = 8, Hkv = 8, T = 32k: 254.7 us against
# cuDNN's 251.6; B = 64, Hkv = 8, T = 16k: 936 us against 942) and never more than 2 % off
# the best config of any shape by more than 3 %. The earlier 64 / 4 / 3 lost 13 % on
# the same shapes (287.6 and 1085.8 us) while 64 / 4 / 2 did not, so the loss came
# from that pipeline depth at 64-key tiles, not from the tile size (not profiled). The interpreter runs 16-key tiles: every program is
# executed in Python there, small tiles keep CPU tests fast.
# ---------------------------------------------------------------------------
GPU_CONFIG = dict(BLOCK_N=128, num_warps=8, num_stages=3)
INTERPRETER_CONFIG = dict(BLOCK_N=16, num_warps=1, num_stages=1)
MAX_BLOCK_M = 64
PROGRAMS_PER_SM = 2     # target when splitting: two stage-1 programs per SM
MIN_SPLIT_KEYS = 256    # no split shorter than this: its partials (G*Lq*(D+1) floats) would rival its keys
MAX_SPLITS = 128        # stage 2 merges at most this many partials per row in one tile
INTERPRETER_SPLITS = 3  # on the CPU there is no SM count: a fixed count, which still exercises the merge


@functools.lru_cache(maxsize=None)
def _sm_count(device_index):
    """Streaming multiprocessors of a CUDA device. Read on first use, never at import
    (there is no driver on a CPU machine)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(batch, kv_heads, seq_len, num_sms):
    """How many splits S of the keys: enough programs to fill the GPU, splits long enough to pay off.

    Stage 1 runs B * Hkv * S programs, each streaming its share of the cache.
    Measured on an H200, one program per SM already keeps HBM near its peak
    (128 programs of a long cache read at 4.1 TB/s), so
    - B * Hkv >= num_sms: S = 1. No split, no partials, no stage 2 (and one
      kernel launch instead of two, which matters at short T);
    - otherwise S = next power of two >= PROGRAMS_PER_SM * num_sms / (B * Hkv):
      it grows as B * Hkv shrinks (B = 1 with MQA has ONE KV head: S ~ 2 * SMs).
      Powers of two cut power-of-two caches into equal, tile-aligned splits.
    Each split costs its partials: G * Lq * (D + 1) float32 written and read
    back by stage 2, and its programs' start-up. S <= T / MIN_SPLIT_KEYS keeps
    every split at least 256 keys (its partials a few % of its K, V bytes);
    S <= MAX_SPLITS bounds stage 2's tile.
    """
    if batch * kv_heads == 0 or seq_len == 0 or batch * kv_heads >= num_sms:
        return 1
    wanted = triton.next_power_of_2(math.ceil(PROGRAMS_PER_SM * num_sms / (batch * kv_heads)))
    longest_useful = max(1, seq_len // MIN_SPLIT_KEYS)
    return max(1, min(wanted, longest_useful, MAX_SPLITS))


def _check_inputs(q, k, v, kv_lens, scale, num_splits):
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, dtypes=(torch.float16, torch.bfloat16, torch.float32))
        if x.dim() != 4:
            raise ValueError(f"{name} must be (batch, heads, seq, head_dim), got shape {tuple(x.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"v {tuple(v.shape)} must have k's shape {tuple(k.shape)} (this kernel needs Dv == D)")
    (B, H, Lq, D), (Bk, Hkv, T, Dk) = q.shape, k.shape
    if Bk != B:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same batch")
    if Dk != D:
        raise ValueError(f"q and k must have the same head_dim, got q {D} and k {Dk}")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"q's {H} heads must be a multiple of k/v's {Hkv} heads (GQA groups)")
    if not 1 <= D <= 256:
        raise ValueError(f"head_dim must be in 1..256 for this kernel, got {D}")
    check_scale(scale)
    check_num_splits(num_splits)
    check_kv_lens(kv_lens, B, T, q.device)   # one host sync (the range of the lengths)
    check_triton_device(q, INTERPRETED)


def triton_decode_attention(q, k, v, kv_lens=None, scale=None, num_splits=None):
    """out, lse = attention of q (B, H, Lq, D) over the cache k, v (B, Hkv, T, D), split over the keys.

    kv_lens (B,) int: valid keys per row (None: all T); query i sits at
    kv_lens[b] - Lq + i, bottom-right causal. num_splits: None chooses it with
    choose_num_splits (from B, Hkv, T and the GPU's SM count; a fixed
    INTERPRETER_SPLITS on the CPU); an int forces it. Returns out (B, H, Lq, D)
    in q's dtype and lse (B, H, Lq) float32 (natural log; -inf and out 0 for a
    row that sees no key). A decode step calls this once per layer, so the
    launcher does little on the host: a few checks, two allocations, one or two
    launches (with kv_lens it also checks their range, one host sync).
    """
    _check_inputs(q, k, v, kv_lens, scale, num_splits)
    q = q.contiguous()                                   # (B, H, Lq, D): tiny, usually contiguous already
    k, v = contiguous_last(k), contiguous_last(v)      # the cache may be a strided view; D must be unit-stride
    kv_lens = kv_lens.contiguous() if kv_lens is not None else None  # the kernel reads KV_LENS[b] at offset b
    B, H, Lq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    G = H // Hkv
    out = torch.empty_like(q)                            # every element is written by the kernels
    lse = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse

    config = INTERPRETER_CONFIG if INTERPRETED else GPU_CONFIG
    block_n = config["BLOCK_N"]
    if num_splits is None:
        num_splits = (INTERPRETER_SPLITS if q.device.type == "cpu"
                      else choose_num_splits(B, Hkv, T, _sm_count(q.device.index or 0)))
    # keys per split, rounded up to whole tiles (so only a split's last tile is partial);
    # trailing splits may then be empty: they report lse -inf and merge to nothing
    chunk = max(block_n, triton.cdiv(triton.cdiv(T, num_splits), block_n) * block_n)
    block_m = max(16, min(MAX_BLOCK_M, triton.next_power_of_2(G * Lq)))
    block_d = max(16, triton.next_power_of_2(D))

    if num_splits == 1:  # nothing to merge: stage 1 writes out and lse itself (same layout, S = 1)
        o_part, lse_part = out, lse
    else:                # partials (B, H, Lq, S, D) and (B, H, Lq, S), float32, in one allocation
        part = torch.empty(B * H * Lq * num_splits * (D + 1), device=q.device, dtype=torch.float32)
        o_part, lse_part = part[:B * H * Lq * num_splits * D], part[B * H * Lq * num_splits * D:]

    grid = (num_splits, B * Hkv, triton.cdiv(G * Lq, block_m))
    _split_kernel[grid](
        q, k, v, kv_lens if kv_lens is not None else lse, o_part, lse_part,  # lse: a dummy pointer without kv_lens
        *k.stride()[:3], *v.stride()[:3], H, Hkv, Lq, T, num_splits, chunk,
        (1.0 / math.sqrt(D) if scale is None else float(scale)) * LOG2E.value,
        GROUP=G, HAS_LENS=kv_lens is not None, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=block_m,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **config)
    if num_splits > 1:
        _merge_kernel[(B * H * Lq,)](o_part, lse_part, out, lse, num_splits, HEAD_DIM=D, BLOCK_D=block_d,
                                     BLOCK_S=triton.next_power_of_2(num_splits), num_warps=1 if INTERPRETED else 4)
    return out, lse
