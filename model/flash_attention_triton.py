"""L05 part 2 — FlashAttention in Triton: forward and backward kernels.

The same algorithm as flash_attention.py (tiles of Q, K, V; online softmax;
recomputation in the backward), now as GPU kernels. One program instance owns
one tile and keeps it in registers/shared memory (SRAM) for its whole life, so
HBM sees each Q, K, V, O element a small number of times and never an
(Lq, Lk) matrix:

    forward     grid (Lq / BLOCK_M, B * H): a query tile loops over key tiles
                with a running max m_i, running sum l_i and accumulator acc.
    backward    1. preprocess: D_i = rowsum(dO_i * O_i)           (B, H, Lq)
                2. dK, dV: grid (Lk / BLOCK_N, B * Hkv); a key tile loops over
                   the query tiles (of every query head of its group) that see it
                3. dQ: grid (Lq / BLOCK_M, B * H); a query tile loops over keys

What it supports (tutorial/CONVENTIONS.md): causal with bottom-right alignment
(query i sits at position i + Lk - Lq), any Lq and Lk (tails are masked), head
dims 16..128 (not only powers of two: the tile is padded), GQA (query head h
reads key/value head h // (H // Hkv) straight from K and V: no repeated copy),
and a sliding window W (key j visible from position p iff 0 <= p - j < W; key
tiles outside the band are never visited). A fully masked row gives out 0,
lse -inf and zero gradients.

Where it runs: CUDA in float16, bfloat16 and float32 (float32 matmuls in full
IEEE precision, not TF32: float32 is the "check my answer" dtype here), and CPU
tensors under TRITON_INTERPRET=1 (float32/float16), which is how the CPU-only CI
runs it. Tested on an H100 (Triton 3.6, torch 2.11) and under the interpreter (Triton 3.9).

Speed notes. Block sizes, warps and pipeline stages come from a small table
per kernel and head dim (GPU_TILES, measured on an H100). Two tricks from the FlashAttention
papers matter most: key tiles that need no mask (wholly below the diagonal,
wholly inside the window, wholly inside Lk) run a loop without any masking
code, and exponentials are exp2 with log2(e) folded into the scale.
Nothing here touches the CUDA driver at import time.
"""
import math
import os

import torch
import triton
import triton.language as tl

from ._checks import check_positive_int, check_scale, check_tensor

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e)), and exp2 is one hardware instruction


# Triton reads TRITON_INTERPRET when it decorates a kernel, i.e. when this module is imported:
# read it once here too, so the launcher and the kernels always agree.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


# ---------------------------------------------------------------------------
# Which tiles a program must visit. Shared by the forward and the dQ kernel
# (a query tile looking at key tiles) and, transposed, by the dK/dV kernel.
# ---------------------------------------------------------------------------
@triton.jit
def _visible(pos_m, offs_n, Lk, window, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: may the query at absolute position pos_m see key offs_n?"""
    raise NotImplementedError("L05.2: implement _visible in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")


@triton.jit
def _key_tiles(start_m, offset, Lk, window,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    """Key range of the query tile [start_m, start_m + BLOCK_M), in three parts:
    [lo, mid_lo) masked, [mid_lo, mid_hi) whole tiles every row sees, [mid_hi, hi) masked.
    `offset` = Lk - Lq turns a query index into its absolute position."""
    raise NotImplementedError("L05.2: implement _key_tiles in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------
@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
               pos_m, offs_d, lo, hi, Lk, window, qk_scale,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
               DOT_PRECISION: tl.constexpr):
    """Fold key tiles [lo, hi) into (acc, l_i, m_i). MASKED tiles apply the
    causal/window/tail mask; the others are known to be fully visible."""
    raise NotImplementedError("L05.2: implement _fwd_tiles in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")


@triton.jit
def _fwd_kernel(Q, K, V, Out, LSE,
                stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                H, GROUP, Lq, Lk, window, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One program: query rows [start_m, start_m + BLOCK_M) of one (batch, head)."""
    raise NotImplementedError("L05.2: implement _fwd_kernel in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")


# ---------------------------------------------------------------------------
# Backward
#   P = exp(S - lse)                  recomputed, never stored
#   dV = P^T dO     dP = dO V^T       dS = P * (dP - D) * scale,  D = rowsum(dO * O)
#   dK = dS^T Q     dQ = dS K
# ---------------------------------------------------------------------------
@triton.jit
def _bwd_preprocess(Out, dOut, Delta, stride_ob, stride_oh, stride_om, stride_dob, stride_doh, stride_dom,
                    H, Lq, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """D_i = sum_d dO[i, d] * O[i, d] in float32: equals rowsum(P * dP), without P."""
    raise NotImplementedError("L05.2: implement _bwd_preprocess in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")


@triton.jit
def _query_tiles(start_n, offset, Lq, Lk, window,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    """Query range that sees the key tile [start_n, start_n + BLOCK_N), in three parts:
    [lo, mid_lo) masked, [mid_lo, mid_hi) whole tiles that see every key of it, [mid_hi, hi) masked.
    The last key tile may run past Lk: then every query tile needs the mask."""
    raise NotImplementedError("L05.2: implement _query_tiles in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom,
                offs_n, offs_d, lo, hi, Lq, Lk, offset, window, qk_scale,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                DOT_PRECISION: tl.constexpr):
    """Add the query tiles [lo, hi) of one query head to this key tile's dK, dV.
    Works with transposed tiles (keys along rows) so dk, dv stay (BLOCK_N, D)."""
    raise NotImplementedError("L05.2: implement _dkdv_tiles in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, dOut, LSE, Delta, dK, dV,
                     stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                     stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                     H, Hkv, GROUP, Lq, Lk, window, sm_scale, qk_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One program: keys [start_n, start_n + BLOCK_N) of one (batch, key/value head).
    Sums over the GROUP query heads that share the head, so no atomics are needed."""
    raise NotImplementedError("L05.2: implement _bwd_dkdv_kernel in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")


@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn,
              pos_m, offs_d, lo, hi, Lk, window, qk_scale,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
              DOT_PRECISION: tl.constexpr):
    """Add key tiles [lo, hi) to this query tile's dQ."""
    raise NotImplementedError("L05.2: implement _dq_tiles in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")


@triton.jit
def _bwd_dq_kernel(Q, K, V, dOut, LSE, Delta, dQ,
                   stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                   stride_dqb, stride_dqh, stride_dqm,
                   H, GROUP, Lq, Lk, window, sm_scale, qk_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One program: dQ for query rows [start_m, start_m + BLOCK_M) of one (batch, head)."""
    raise NotImplementedError("L05.2: implement _bwd_dq_kernel in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")


# ---------------------------------------------------------------------------
# Launch configuration: (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel and
# head-dim class, picked by `benchmarks/flash_attention_gpu.py --sweep` on an
# H100 (float16, L = 8k, causal and not; the sweep's candidates and timings are
# in the lesson text). Fixed rather than autotuned per call: autotuning compiles
# every candidate for every new shape, which costs more than it wins here.
# What the winners say: 3 pipeline stages (two K/V tiles loading while a third
# is multiplied) beat 2 everywhere; the backward prefers 128-key tiles, whose
# dK/dV accumulators stay on chip while 32..64 query rows stream past. The
# interpreter runs one small tile: it executes every program in Python, so a
# bigger tile only costs time there.
# ---------------------------------------------------------------------------
GPU_TILES = {
    ("fwd", 64): (128, 64, 8, 3), ("fwd", 128): (64, 64, 4, 3),
    ("dkdv", 64): (32, 128, 4, 3), ("dkdv", 128): (64, 128, 8, 3),
    ("dq", 64): (128, 64, 8, 3), ("dq", 128): (128, 64, 8, 3),
}
INTERPRETER_TILES = (16, 16, 1, 1)


def _launch(kernel, name, grid, *args, **constants):
    """kernel[grid](*args) with the tile for this kernel and head dim; grid(BLOCK_M, BLOCK_N) -> launch grid."""
    if INTERPRETED:
        block_m, block_n, warps, stages = INTERPRETER_TILES
    else:
        block_m, block_n, warps, stages = GPU_TILES[(name, 64 if constants["HEAD_DIM"] <= 64 else 128)]
    kernel[grid(block_m, block_n)](*args, **constants, BLOCK_M=block_m, BLOCK_N=block_n,
                                   num_warps=warps, num_stages=stages)


# ---------------------------------------------------------------------------
# Python entry points
# ---------------------------------------------------------------------------
def _check_inputs(q, k, v, causal, scale, window):
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, dtypes=(torch.float16, torch.bfloat16, torch.float32))
        if x.dim() != 4:
            raise ValueError(f"{name} must be (batch, heads, seq, head_dim), got shape {tuple(x.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    (B, H, Lq, D), (Bk, Hkv, Lk, Dk) = q.shape, k.shape
    if Bk != B or Dk != D:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch and head_dim")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"q's {H} heads must be a multiple of k/v's {Hkv} heads (GQA groups)")
    if not 16 <= D <= 128:
        raise ValueError(f"head_dim must be in 16..128 for this kernel, got {D}")
    if Lq < 1 or Lk < 1:
        raise ValueError(f"sequence lengths must be >= 1, got Lq={Lq}, Lk={Lk}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    check_scale(scale)
    if window is not None:
        check_positive_int("window", window)
        if not causal:
            raise ValueError(f"window={window} is a causal sliding window: pass causal=True with it")
    if q.device.type == "cpu" and not INTERPRETED:
        raise ValueError("q is on the CPU: Triton runs CPU tensors only under TRITON_INTERPRET=1, set before "
                         "this module (and triton) is first imported; otherwise move q, k, v to a CUDA device")
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"q must be on a CUDA device (or the CPU under the interpreter), got {q.device}")


def _contiguous_last(x):
    """The kernels assume unit stride along head_dim (every other stride is passed in)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _kernel_constants(q, causal, window):
    """The compile-time arguments every attention kernel takes."""
    D = q.shape[-1]
    return dict(HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)), CAUSAL=causal, WINDOWED=window is not None,
                DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32")


def _softmax_scale(head_dim, scale):
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def _forward(q, k, v, causal, scale, window):
    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    sm_scale = _softmax_scale(D, scale)
    out = torch.empty_like(q)
    lse = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)

    _launch(_fwd_kernel, "fwd", lambda block_m, block_n: (triton.cdiv(Lq, block_m), B * H),
            q, k, v, out, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            H, H // Hkv, Lq, Lk, window or 0, sm_scale * LOG2E, **_kernel_constants(q, causal, window))
    return out, lse


def _backward(q, k, v, out, lse, grad_out, causal, scale, window):
    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    sm_scale = _softmax_scale(D, scale)
    grad_out = _contiguous_last(grad_out)
    common = _kernel_constants(q, causal, window)

    delta = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    pre_m = 16 if INTERPRETED else 64
    _bwd_preprocess[(triton.cdiv(Lq, pre_m), B * H)](
        out, grad_out, delta, *out.stride()[:3], *grad_out.stride()[:3], H, Lq,
        HEAD_DIM=D, BLOCK_D=common["BLOCK_D"], BLOCK_M=pre_m)

    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _launch(_bwd_dkdv_kernel, "dkdv", lambda block_m, block_n: (triton.cdiv(Lk, block_n), B * Hkv),
            q, k, v, grad_out, lse, delta, dk, dv,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *grad_out.stride()[:3],
            *dk.stride()[:3], *dv.stride()[:3],
            H, Hkv, H // Hkv, Lq, Lk, window or 0, sm_scale, sm_scale * LOG2E, **common)
    _launch(_bwd_dq_kernel, "dq", lambda block_m, block_n: (triton.cdiv(Lq, block_m), B * H),
            q, k, v, grad_out, lse, delta, dq,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *grad_out.stride()[:3], *dq.stride()[:3],
            H, H // Hkv, Lq, Lk, window or 0, sm_scale, sm_scale * LOG2E, **common)
    return dq, dk, dv


def triton_flash_attention_forward(q, k, v, causal=False, scale=None, window=None):
    """out, lse = attention of q (B, H, Lq, D) over k, v (B, Hkv, Lk, D).

    H must be a multiple of Hkv (GQA); causal is bottom-right aligned; window W
    (with causal=True) keeps keys 0 <= p - j < W. lse is natural-log, float32,
    (B, H, Lq); -inf (and out 0) for a row that sees no key.
    """
    raise NotImplementedError("L05.2: implement triton_flash_attention_forward in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")


class TritonFlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, out and lse (O(L) extra), not P."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, window):
        raise NotImplementedError("L05.2: implement TritonFlashAttentionFunction.forward in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")

    @staticmethod
    def backward(ctx, grad_out):
        raise NotImplementedError("L05.2: implement TritonFlashAttentionFunction.backward in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")


def triton_flash_attention(q, k, v, causal=False, scale=None, window=None):
    """Differentiable attention through the Triton kernels (same arguments as
    triton_flash_attention_forward; returns out only)."""
    raise NotImplementedError("L05.2: implement triton_flash_attention in model/flash_attention_triton.py (see tutorial/L05_flash_attention/README.md)")
