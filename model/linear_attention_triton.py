"""L13 part 2 — causal linear attention in Triton: the chunked form, one pass over the sequence.

linear_attention_chunked (solutions/linear_attention.py) walks the chunks in a
Python loop and launches a handful of kernels per chunk: at L = 128k and C = 64
that is 2048 iterations of ~10 launches, and every intermediate (the (C, C)
block, phi(q) S, the new state) goes through HBM. This kernel does the same
walk inside ONE program per (batch, head, block of value columns):

    for each chunk c of C = BLOCK_C tokens, in order:
        A      = tril(phi(Q_c) phi(K_c)^T)                  (C, C)   the quadratic part, causal
        out_c  = [A V_c + phi(Q_c) S] / [A 1 + phi(Q_c) z + eps]      (C, BLOCK_DV)
        S     += phi(K_c)^T V_c                             (D, BLOCK_DV)
        z     += phi(K_c)^T 1                               (D,)

The state (S, z) lives in float32 registers for the whole walk: it is read
from and written to HBM never. With one value block per head, Q, K, V are read
once and out written once: 4 * L * D * 2 bytes per head in bf16, the least any
implementation can move (each further value block reads Q and K again).

Why the chunk size is the BLOCK (the tradeoff the lesson measures):
- Per chunk the intra-chunk part costs C*C*(D + Dv) multiply-adds (A, then A V)
  and the state part 2*C*D*Dv (phi(Q) S and the update). Per token: C*(D + Dv)
  + 2*D*Dv. A larger C makes the quadratic part grow linearly in C.
- A smaller C means more chunks, and the chunks are a sequential chain (chunk
  c needs the state after c - 1): L / C dependent steps, each with its own
  load latency. C = 1 would be the recurrence, token by token.
- tl.dot needs every dimension >= 16, and (C, C) float32 A sits in registers
  next to S: C = 64 keeps both small enough for one program of 4 warps (the
  default, reasoned, not yet measured: `--sweep` of the benchmark times 32..128).

Parallelism: only B * H * ceil(Dv / BLOCK_DV) programs run, each walking the
whole sequence. At B = 1, H = 16 that is 16 programs per Dv block on a GPU of
132 SMs, so the launcher splits the value columns into blocks (the Dv axis of
S and out is independent: each block needs the same phi(Q) phi(K)^T but its own
columns of V), trading a recomputed A per block for more busy SMs
(choose_block_dv). Production kernels (flash-linear-attention) go further and
compute the chunk states in parallel, then scan them; this kernel keeps the one
sequential walk of the lesson's PyTorch chunked form.

Precision (the course's rule, solutions/linear_attention.py): phi, the sums,
the state and the normaliser in float32, the output in the input dtype. The
two intra-chunk products (A, A V) and the update phi(K)^T V take half-precision
operands with a float32 accumulator, like FlashAttention's P V: that is what the
tensor cores multiply at full rate. phi(Q) S keeps S in float32 (tf32 operands):
S sums L outer products, and rounded to float16 it overflows at long L (a value
offset of 1 makes |S| ~ L).

Backward (advanced): TritonLinearAttentionFunction saves q, k, v, out and the
denominators (B, H, L) float32, and runs two more scans, dq forward in time
and dk, dv backward in time (the formulas above _backward_dq_kernel), one
program per (batch, head) with all D columns.

Limits: causal self-attention (Lq == Lk), elu + 1 feature map (inside the
kernel), Dv == D (ValueError naming v), head_dim 1..256 (padded to a power of
two >= 16), chunk_size a power of two in 16..128. Runs on CUDA in float16,
bfloat16, float32 (float32 products in IEEE precision), and on CPU tensors
under TRITON_INTERPRET=1 at small shapes (the CPU-only CI). Tested under the
interpreter (Triton 3.9: forward, backward, every test of the L13 suites). On an
H200 (Triton 3.6, torch 2.11) the L13 suites' Triton and GPU tests passed (the
float16 ones once phi(Q) S took tf32x3 operands, see HALF_STATE_PRECISION; float32
at C = 128, D = 128 once it ran one pipeline stage, see forward_config). One
weak spot: the float32 backward at D = 128 (IEEE products of 128-wide tiles, on
the FMA units) took 51 s to compile there (8 s for the forward), too long for a
graded test, so the GPU gradient test runs D = 64 only. Speed on the H200:
benchmarks/results/linear_attention_gpu.csv and tutorial/L13_linear_attention.
"""
import functools
import numbers
import os

import torch
import triton
import triton.language as tl

from ._checks import check_qkv, check_tensor, check_triton_device, contiguous_last

# Triton reads TRITON_INTERPRET when it decorates a kernel (at import): read it once here too.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

CHUNK_SIZES = (16, 32, 64, 128)  # powers of two (tl.arange), >= 16 (tl.dot), <= 128 (A and S in registers)
MAX_HEAD_DIM = 256


@triton.jit
def _elu_plus_one(x):
    """phi(x) = elu(x) + 1 = x + 1 for x > 0, exp(x) below: positive everywhere. x float32."""
    return tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))  # min: exp of a large x is never formed (inf)


@triton.jit
def _chunked_kernel(Q, K, V, Out, DEN,
                    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
                    stride_vb, stride_vh, stride_vl, H, L, eps,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                    BLOCK_C: tl.constexpr, STORE_DEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    STATE_PRECISION: tl.constexpr):
    """Causal linear attention of one (batch, head), value columns [dv0, dv0 + BLOCK_DV).

    q, k, v (B, H, L, D) with unit stride on D; out (B, H, L, D) contiguous.
    Program (bh, j): batch bh // H, head bh % H, value columns j * BLOCK_DV ...
    STORE_DEN: also write the denominators phi(q_i)·z_i + eps, float32 (B, H, L), for the
    backward (program j = 0 only: every value block computes the same ones).
    DOT_PRECISION: input_precision of the products of input-dtype tiles (A, A V, the update);
    STATE_PRECISION: of phi(Q_c) S, whose operands are float32 (see HALF_STATE_PRECISION)."""
    off_bh = tl.program_id(0)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_c = tl.arange(0, BLOCK_C)                               # token index inside a chunk
    offs_d = tl.arange(0, BLOCK_D)                               # feature index of q, k (and rows of S)
    offs_dv = tl.program_id(1) * BLOCK_DV + tl.arange(0, BLOCK_DV)  # this program's value columns
    d_ok = offs_d < HEAD_DIM                                     # padding when D is not a power of 2
    dv_ok = offs_dv < HEAD_DIM                                   # Dv == D
    q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    k_base = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh
    o_base = Out + off_bh.to(tl.int64) * L * HEAD_DIM           # out is contiguous (B, H, L, D)
    raise NotImplementedError("L13: implement _chunked_kernel in model/linear_attention_triton.py (see tutorial/L13_linear_attention/README.md)")


# ---------------------------------------------------------------------------
# Launch configuration.
#   BLOCK_C   the chunk: chunk_size itself (see the module docstring for the tradeoff).
#   BLOCK_DV  value columns per program: choose_block_dv.
#   num_warps 4: a (64, 64) float32 A and a (64, 64) float32 S are 32 registers per
#             thread each at 128 threads; with the tiles of q, k, v that fits in 255.
#   num_stages 2: the next chunk's Q, K, V load while this one multiplies (they do
#             not depend on the state, so tl.range can pipeline them).
# The interpreter runs one warp and one stage (nothing to pipeline in Python).
# These are reasoned defaults, not measured ones: `benchmarks/linear_attention_gpu.py --sweep`
# times chunk size x value block x warps on a GPU (not run yet).
# ---------------------------------------------------------------------------
GPU_CONFIG = dict(num_warps=4, num_stages=2)
PIPELINE_SHARED_BYTES = 160 * 1024  # two stages of (Q_c, K_c, V_c) tiles must fit in this much shared memory
                                    # (an H100/H200 SM has 228 KiB; the rest is for the dots' operands), else one
# phi(Q_c) S for half-precision inputs. Its operands are float32, and a "tf32" tensor-core product
# TRUNCATES each to 10 mantissa bits: an error of up to 2^-10 of each operand, always towards zero,
# in the numerator only (the denominator phi(Q_c)·z is a float32 sum), so it does not cancel. On
# the H200 test (float16, L = 12289, values offset by 2) it put the output 2.9e-3 from the exact
# answer, past the 2.2e-3 that float16 rounding explains; "tf32x3" (each operand split into a tf32
# part and the tf32 rest, three products: float32-grade) gave 1.2e-3. For bfloat16 the output's
# own rounding (2^-9) dwarfs the truncation: tf32 was within its bound (1.1e-2 against 1.8e-2),
# and tf32x3 costs 13% of the kernel's time at D = 64 and 56% at D = 128 (bfloat16, B = 1,
# H = 16, L = 16k on the H200), so bfloat16 keeps one tf32 product.
HALF_STATE_PRECISION = {torch.float16: "tf32x3", torch.bfloat16: "tf32"}
BACKWARD_GPU_CONFIG = dict(num_warps=8, num_stages=1)  # (D, D) float32 R or S plus (C, C) blocks: more threads
INTERPRETER_CONFIG = dict(num_warps=1, num_stages=1)
MIN_BLOCK = 16  # the smallest tl.dot dimension


# ---------------------------------------------------------------------------
# Backward (advanced). With num_i = phi(q_i)^T S_i, den_i = phi(q_i)·z_i + eps and
# out_i = num_i / den_i, the incoming dO gives
#     dnum_i = dO_i / den_i                 (Dv,)   dden_i = -(dO_i · out_i) / den_i    (scalar)
#     g_ij   = v_j · dnum_i + dden_i        for j <= i: what key j's weight phi(q_i)·phi(k_j) is worth
#     dphi(q_i) = sum_{j<=i} g_ij phi(k_j)  = S_i dnum_i + z_i dden_i      a scan forward, like the forward
#     dphi(k_j) = sum_{i>=j} g_ij phi(q_i)  = R_j v_j + r_j                a scan BACKWARD over
#     dv_j      = sum_{i>=j} (phi(q_i)·phi(k_j)) dnum_i = R_j^T phi(k_j)   R_j = sum_{i>=j} phi(q_i) dnum_i^T,
#                                                                          r_j = sum_{i>=j} phi(q_i) dden_i
# and dq = dphi(q) * phi'(q) with phi'(x) = 1 for x > 0, exp(x) below (the same for k).
# Two kernels, one per direction, one program per (batch, head) with all D columns: dphi(q)
# sums over every value column, so the columns cannot be split without a reduction.
# Everything in float32 (tf32 products for half inputs); gradients stored in the input dtype.
# ---------------------------------------------------------------------------
@triton.jit
def _elu_plus_one_grad(x):
    """d phi / dx = 1 for x > 0, exp(x) below. x float32."""
    return tl.where(x > 0, 1.0, tl.exp(tl.minimum(x, 0.0)))


@triton.jit
def _load_chunk(base, offs_l, stride_l, offs_d, row_ok):
    return tl.load(base + offs_l[:, None].to(tl.int64) * stride_l + offs_d[None, :], mask=row_ok, other=0.0)


@triton.jit
def _backward_dq_kernel(Q, K, V, Out, DO, DEN, DQ,
                        stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
                        stride_vb, stride_vh, stride_vl, stride_ob, stride_oh, stride_ol, H, L,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
                        DOT_PRECISION: tl.constexpr):
    """dq of one (batch, head): chunks in order, carrying (S, z) as the forward does.
    out and dO (B, H, L, D) through their strides; den float32 (B, H, L); dq contiguous."""
    off_bh = tl.program_id(0)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_c = tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    b64, h64 = off_b.to(tl.int64), off_h.to(tl.int64)
    raise NotImplementedError("L13: implement _backward_dq_kernel in model/linear_attention_triton.py (see tutorial/L13_linear_attention/README.md)")


@triton.jit
def _backward_dkdv_kernel(Q, K, V, Out, DO, DEN, DK, DV,
                          stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
                          stride_vb, stride_vh, stride_vl, stride_ob, stride_oh, stride_ol, H, L,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
                          DOT_PRECISION: tl.constexpr):
    """dk and dv of one (batch, head): chunks from the LAST to the first, carrying
    R = sum_{i>=j} phi(q_i) dnum_i^T (D, Dv) and r = sum_{i>=j} phi(q_i) dden_i (D,)."""
    off_bh = tl.program_id(0)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_c = tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    b64, h64 = off_b.to(tl.int64), off_h.to(tl.int64)
    raise NotImplementedError("L13: implement _backward_dkdv_kernel in model/linear_attention_triton.py (see tutorial/L13_linear_attention/README.md)")


@functools.lru_cache(maxsize=None)
def _sm_count(device_index):
    """Streaming multiprocessors of a CUDA device. Read on first use, never at import."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_block_dv(batch_heads, head_dim, num_sms):
    """Value columns per program: all of them (one A per head) when B * H alone fills
    the GPU; otherwise halve the block (down to 16) until there are >= num_sms programs.

    Each extra block recomputes A = phi(Q_c) phi(K_c)^T (C*C*D per chunk) but does only
    its share of A V, phi(Q) S and the update, and runs on its own SM: at B * H = 16 on
    132 SMs, splitting D = 64 into four blocks of 16 runs 64 programs instead of 16."""
    block = max(MIN_BLOCK, triton.next_power_of_2(head_dim))
    while block > MIN_BLOCK and batch_heads * triton.cdiv(head_dim, block) < num_sms:
        block //= 2
    return block


def _check_inputs(q, k, v, chunk_size, eps, block_dv):
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, dtypes=(torch.float16, torch.bfloat16, torch.float32))
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, L, D), got shape {tuple(x.shape)}")
    check_qkv(q, k, v)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"causal self-attention: q and k need the same length, got q {tuple(q.shape)} "
                         f"and k {tuple(k.shape)}")
    if v.shape[-1] != q.shape[-1]:
        raise ValueError(f"v has head_dim {v.shape[-1]} but q has {q.shape[-1]}: this kernel needs Dv == D")
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in 1..{MAX_HEAD_DIM} for this kernel, got {q.shape[-1]}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"chunk_size must be one of {CHUNK_SIZES} for this kernel (a power of two: it is the "
                         f"tile of tl.arange and tl.dot), got {chunk_size}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    if block_dv is not None and (isinstance(block_dv, bool) or not isinstance(block_dv, numbers.Integral)
                                 or block_dv < MIN_BLOCK or block_dv & (block_dv - 1)):
        raise ValueError(f"block_dv must be None or a power of two >= {MIN_BLOCK}, got {block_dv!r}")
    check_triton_device(q, INTERPRETED)


def _forward(q, k, v, chunk_size, eps, block_dv, store_den):
    """Launch the forward kernel on checked, D-unit-stride inputs: out (B, H, L, D) and, when
    store_den, den (B, H, L) float32 for the backward (else None)."""
    B, H, L, D = q.shape
    out = torch.empty((B, H, L, D), device=q.device, dtype=q.dtype)  # contiguous; every element is written
    den = torch.empty((B, H, L), device=q.device, dtype=torch.float32) if store_den else None
    if out.numel() == 0:
        return out, den
    block_d = max(MIN_BLOCK, triton.next_power_of_2(D))
    if block_dv is None:
        block_dv = (block_d if q.device.type == "cpu"                 # the interpreter: fewest programs
                    else choose_block_dv(B * H, D, _sm_count(q.device.index or 0)))
    block_dv = min(block_dv, block_d)
    grid = (B * H, triton.cdiv(D, block_dv))
    _chunked_kernel[grid](
        q, k, v, out, den if store_den else out, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], H, L,
        float(eps), HEAD_DIM=D, BLOCK_D=block_d, BLOCK_DV=block_dv, BLOCK_C=chunk_size, STORE_DEN=store_den,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        STATE_PRECISION=HALF_STATE_PRECISION.get(q.dtype, "ieee"),
        **(INTERPRETER_CONFIG if INTERPRETED else forward_config(chunk_size, block_d, block_dv, q.element_size())))
    return out, den


def forward_config(chunk_size, block_d, block_dv, element_size):
    """GPU_CONFIG, with one stage instead of two when two stages of the chunk's Q, K, V tiles
    would not fit in PIPELINE_SHARED_BYTES (float32 at C = 128, D = 128: 2 x 136 KiB)."""
    stage_bytes = chunk_size * (2 * block_d + block_dv) * element_size
    stages = GPU_CONFIG["num_stages"] if GPU_CONFIG["num_stages"] * stage_bytes <= PIPELINE_SHARED_BYTES else 1
    return dict(GPU_CONFIG, num_stages=stages)


def _backward(q, k, v, out, den, grad_out, chunk_size):
    """dq, dk, dv (each (B, H, L, D) in q's dtype) from the saved forward and dO."""
    grad_out = contiguous_last(grad_out)
    B, H, L, D = q.shape
    dq, dk, dv = (torch.empty((B, H, L, D), device=q.device, dtype=q.dtype) for _ in range(3))
    if dq.numel() == 0:
        return dq, dk, dv
    common = dict(HEAD_DIM=D, BLOCK_D=max(MIN_BLOCK, triton.next_power_of_2(D)), BLOCK_C=chunk_size,
                  DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                  **(INTERPRETER_CONFIG if INTERPRETED else BACKWARD_GPU_CONFIG))
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *grad_out.stride()[:3], H, L)
    _backward_dq_kernel[(B * H,)](q, k, v, out, grad_out, den, dq, *strides, **common)
    _backward_dkdv_kernel[(B * H,)](q, k, v, out, grad_out, den, dk, dv, *strides, **common)
    return dq, dk, dv


class TritonLinearAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: forward saves q, k, v, out and the denominators (B, H, L) float32
    (O(L) extra, no (C, C) block, no state); backward runs the two scans."""

    @staticmethod
    def forward(ctx, q, k, v, chunk_size, eps, block_dv):
        out, den = _forward(q, k, v, chunk_size, eps, block_dv, store_den=True)
        ctx.save_for_backward(q, k, v, out, den)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, den = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, den, grad_out, ctx.chunk_size)
        return dq, dk, dv, None, None, None


def triton_linear_attention_chunked(q, k, v, chunk_size=64, eps=1e-6, *, block_dv=None):
    """Causal linear attention with phi = elu + 1, chunked, one Triton program per (batch, head, Dv block).

    q, k, v (B, H, L, D) -> out (B, H, L, D) in q's dtype, equal to
    linear_attention(q, k, v, causal=True, eps=eps) and to linear_attention_chunked:
        out_i = phi(q_i)^T S_i / (phi(q_i)·z_i + eps),  S_i = sum_{j<=i} phi(k_j) v_j^T,  z_i = sum_{j<=i} phi(k_j).
    chunk_size: the kernel's BLOCK_C, one of 16, 32, 64, 128. block_dv: value columns
    per program (None: choose_block_dv; an explicit power of two >= 16 forces it).
    Differentiable: when autograd records (an input requires grad), the backward kernels run.
    """
    _check_inputs(q, k, v, chunk_size, eps, block_dv)
    q, k, v = contiguous_last(q), contiguous_last(k), contiguous_last(v)  # D must be unit-stride
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return TritonLinearAttentionFunction.apply(q, k, v, chunk_size, eps, block_dv)
    return _forward(q, k, v, chunk_size, eps, block_dv, store_den=False)[0]
