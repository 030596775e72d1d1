"""L05 — FlashAttention, part 1: tiled attention in plain PyTorch (runs on the CPU).

Standard attention builds the whole score matrix

    S = Q K^T * scale          (B, H, Lq, Lk)
    P = softmax(S, dim=-1)     (B, H, Lq, Lk)
    O = P V                    (B, H, Lq, D)

so its memory grows like Lq * Lk: at Lq = Lk = 16k one head's S is 1 GiB in
float32. FlashAttention (Dao et al., 2022) computes the same O block by block
and never holds S or P. Q is cut into query blocks of `block_q` rows and K, V
into key blocks of `block_k` rows. For one query block Q_i it walks over the
key blocks K_j, V_j, and keeps per query row only three running quantities, in
the paper's names:

    m_i  (B, H, block_q)       the largest score seen so far (running max)
    l_i  (B, H, block_q)       sum of exp(score - m_i) over the keys seen so far
    acc  (B, H, block_q, D)    sum of exp(score - m_i) * v over the keys seen so far

When a new key block raises the max from m_old to m_new, everything summed so
far was scaled by exp(-m_old) and must be rescaled by alpha = exp(m_old - m_new)
(the online softmax of L02, Milakov & Gimelshein 2018). After the last key
block, O_i = acc / l_i, and the logsumexp of the row, lse_i = m_i + log(l_i),
is all the backward pass needs to rebuild any block of P exactly:

    P_ij = exp(S_ij - lse_i)

The backward (FlashAttention, Dao et al. 2022, Algorithm 4; FlashAttention-2
keeps the one number lse per row where the first paper kept m and l)
recomputes S and P block by block from Q, K and lse instead of storing P, and
uses D_i = rowsum(dO_i * O_i), one number per query row, in place of
rowsum(P * dP) (the softmax Jacobian of L02's softmax_backward):

    dV_j += P_ij^T dO_i
    dP_ij = dO_i V_j^T
    dS_ij = P_ij * (dP_ij - D_i) * scale
    dQ_i += dS_ij K_j,      dK_j += dS_ij^T Q_i

Memory beyond the inputs and outputs: O(block_q * block_k) per (batch, head)
for one block of scores, plus O(Lq) for m, l and lse. Work: the same FLOPs as
standard attention, minus the key blocks that causality hides entirely.

Block sizes: block_q and block_k are the number of query rows and key rows in
one tile. Any sizes >= 1 work, including ones that do not divide Lq or Lk (the
last block is shorter) or that exceed them (one block). On a GPU they are chosen
so that a tile fits in on-chip SRAM; here they only trade Python loop overhead
(small blocks: many iterations) against the size of the temporary block.

Conventions (tutorial/CONVENTIONS.md): q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv);
scale defaults to 1/sqrt(D); causal is aligned bottom-right (query i sees keys
j <= i + Lk - Lq); a query that sees no key (causal with Lq > Lk) gets output
0, lse -inf and zero gradients, never NaN. Half-precision inputs are computed in
float32 and returned in their dtype; lse is float32 (float64 for float64 inputs,
so that gradcheck can verify the backward exactly).

Tested on the CPU (torch 2.13, float16, bfloat16, float32, float64); the same
code runs unchanged on CUDA tensors. This is a teaching implementation: it
shows the memory saving, not the speed.
Every block is a handful of separate PyTorch calls, so it is much slower than
F.scaled_dot_product_attention. Part 2 of the lesson (flash_attention_triton.py)
runs the same loop inside one GPU kernel.
"""
import math

import torch

from ._checks import check_positive_int, check_qkv, check_scale, check_tensor, compute_dtype


def visible_key_end(q_end, q_len, k_len, causal):
    """Number of leading keys that the query rows before `q_end` can see.

    Without causality every key: k_len. With bottom-right causality the last
    query of the block, row q_end - 1, sits at absolute position
    q_end - 1 + k_len - q_len and sees keys j <= that position, so the keys
    [0, q_end + k_len - q_len) are the only ones any row of the block sees
    (clamped to [0, k_len]; 0 when the whole block is fully masked). A key
    block that starts at or after this bound is skipped: it lies wholly above
    the diagonal. The forward and the backward both loop over
    range(0, visible_key_end(...), block_k).
    """
    ### BEGIN SOLUTION
    if not causal:
        return k_len
    return max(0, min(k_len, q_end + k_len - q_len))
    ### END SOLUTION


def flash_attention_forward(q, k, v, causal=False, scale=None, block_q=64, block_k=64):
    """Tiled attention forward: returns (out, lse) without ever holding the
    (Lq, Lk) score matrix.

    q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv), one float dtype.
    out (B, H, Lq, Dv) in q's dtype; lse (B, H, Lq) = log sum_j exp(S_ij), the
    natural-log logsumexp of each row's visible scores, in float32 (float64
    for float64 inputs), -inf for a row that sees no key (whose out is 0).

    For each query block Q_i (rows [q_start, q_end)):
        m_i = -inf, l_i = 0, acc = 0
        for each key block K_j, V_j that some row of the block can see
        (keys [0, visible_key_end(q_end, ...)); later blocks are skipped):
            S     = Q_i K_j^T * scale               (masked to -inf where j > i + Lk - Lq)
            m_new = max(m_i, rowmax(S))
            P     = exp(S - m_new)
            alpha = exp(m_i - m_new)                rescales what was summed so far
            l_i   = alpha * l_i + rowsum(P)
            acc   = alpha * acc + P V_j
            m_i   = m_new
        out_i = acc / l_i,   lse_i = m_i + log(l_i)

    Checks (ValueError/TypeError naming the argument): q, k, v 4-D float tensors
    of one dtype and device with matching (B, H), D and Lk; causal a bool;
    scale None or a finite number; block_q, block_k ints >= 1.
    """
    ### BEGIN SOLUTION
    _check_inputs(q, k, v, causal, scale, block_q, block_k)
    B, H, Lq, D = q.shape
    Lk, Dv = k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    out_dtype, dtype = q.dtype, compute_dtype(q.dtype)  # float32 for half inputs: exp and sums need the range
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)

    out = torch.zeros(B, H, Lq, Dv, dtype=dtype, device=q.device)
    lse = torch.full((B, H, Lq), -math.inf, dtype=dtype, device=q.device)

    for q_start in range(0, Lq, block_q):
        q_end = min(q_start + block_q, Lq)
        q_i = q[:, :, q_start:q_end]  # (B, H, bq, D), bq = q_end - q_start <= block_q
        m_i = torch.full((B, H, q_end - q_start), -math.inf, dtype=dtype, device=q.device)  # running max
        l_i = torch.zeros(B, H, q_end - q_start, dtype=dtype, device=q.device)  # running sum of exp(s - m_i)
        acc = torch.zeros(B, H, q_end - q_start, Dv, dtype=dtype, device=q.device)  # running sum of exp(s - m_i) v

        # Causal: the loop stops after the last key block with any visible key.
        for k_start in range(0, visible_key_end(q_end, Lq, Lk, causal), block_k):
            k_end = min(k_start + block_k, Lk)
            k_j, v_j = k[:, :, k_start:k_end], v[:, :, k_start:k_end]  # (B, H, bk, D), (B, H, bk, Dv)

            # -- compute qk --
            s = q_i @ k_j.transpose(-2, -1) * scale  # (B, H, bq, D) @ (B, H, D, bk) -> (B, H, bq, bk)
            if causal:
                s = _mask_block(s, q_start, q_end, k_start, k_end, Lq, Lk)

            # -- online softmax: new max, rescale what was summed so far --
            m_new = torch.maximum(m_i, s.amax(dim=-1))  # (B, H, bq)
            m_safe = _finite_or_zero(m_new)  # a row with no visible key yet: avoid -inf - (-inf)
            p = torch.exp(s - m_safe[..., None])  # (B, H, bq, bk); masked scores give exp(-inf) = 0
            alpha = torch.exp(m_i - m_safe)  # (B, H, bq): exp(m_old - m_new) <= 1; 0 on the first visible block
            l_i = alpha * l_i + p.sum(dim=-1)
            acc = alpha[..., None] * acc + p @ v_j  # (B, H, bq, bk) @ (B, H, bk, Dv) -> (B, H, bq, Dv)
            m_i = m_new

        # -- epilogue: normalise once, and keep the row's logsumexp for the backward --
        empty = l_i == 0  # rows that saw no key (causal, Lq > Lk): out 0, lse -inf
        l_safe = torch.where(empty, torch.ones_like(l_i), l_i)
        out[:, :, q_start:q_end] = acc / l_safe[..., None]
        lse[:, :, q_start:q_end] = torch.where(empty, torch.full_like(m_i, -math.inf), m_i + torch.log(l_safe))

    return out.to(out_dtype), lse  # lse stays in the compute dtype: float32, or float64 for float64 inputs
    ### END SOLUTION


def flash_attention_backward(q, k, v, out, lse, grad_out, causal=False, scale=None, block_q=64, block_k=64):
    """Tiled attention backward by recomputation: returns (dq, dk, dv).

    q, k, v, causal, scale, block sizes: as given to flash_attention_forward;
    out (B, H, Lq, Dv) and lse (B, H, Lq): what it returned; grad_out (B, H, Lq, Dv)
    = dL/dout. dq, dk, dv have the shapes and dtype of q, k, v.

    Nothing of size Lq x Lk is stored or rebuilt: each block of P is recomputed
    from lse, exactly, as P_ij = exp(Q_i K_j^T * scale - lse_i), and used at once.

        D_i   = rowsum(dO_i * O_i)                (B, H, Lq): equals rowsum(P * dP)
        for each query block i and each visible key block j (the forward's loop):
            P     = exp(S_ij - lse_i)            (0 where masked, and in rows with lse = -inf)
            dV_j += P^T dO_i
            dP    = dO_i V_j^T
            dS    = P * (dP - D_i) * scale
            dQ_i += dS K_j
            dK_j += dS^T Q_i

    Checks as in flash_attention_forward, plus: out and grad_out (B, H, Lq, Dv)
    and lse (B, H, Lq) tensors (ValueError/TypeError naming them).
    """
    ### BEGIN SOLUTION
    _check_inputs(q, k, v, causal, scale, block_q, block_k)
    _check_saved(q, v, out, lse, grad_out)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    dtype = compute_dtype(q.dtype)
    qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
    o, do, lse = out.to(dtype), grad_out.to(dtype), lse.to(dtype)

    delta = (do * o).sum(dim=-1)  # (B, H, Lq): the paper's D_i = rowsum(dO * O)
    lse_safe = torch.where(torch.isinf(lse), torch.full_like(lse, math.inf), lse)  # empty row: exp(-inf - inf) = 0
    dq, dk, dv = torch.zeros_like(qc), torch.zeros_like(kc), torch.zeros_like(vc)

    for q_start in range(0, Lq, block_q):
        q_end = min(q_start + block_q, Lq)
        q_i, do_i = qc[:, :, q_start:q_end], do[:, :, q_start:q_end]  # (B, H, bq, D), (B, H, bq, Dv)
        lse_i, delta_i = lse_safe[:, :, q_start:q_end, None], delta[:, :, q_start:q_end, None]  # (B, H, bq, 1)
        dq_i = torch.zeros_like(q_i)  # (B, H, bq, D), accumulated over the key blocks

        for k_start in range(0, visible_key_end(q_end, Lq, Lk, causal), block_k):
            k_end = min(k_start + block_k, Lk)
            k_j, v_j = kc[:, :, k_start:k_end], vc[:, :, k_start:k_end]  # (B, H, bk, D), (B, H, bk, Dv)

            # -- recompute P from lse: exact, no max or sum needed --
            s = q_i @ k_j.transpose(-2, -1) * scale  # (B, H, bq, D) @ (B, H, D, bk) -> (B, H, bq, bk)
            if causal:
                s = _mask_block(s, q_start, q_end, k_start, k_end, Lq, Lk)
            p = torch.exp(s - lse_i)  # (B, H, bq, bk)

            # -- gradients of this block --
            dv[:, :, k_start:k_end] += p.transpose(-2, -1) @ do_i  # (B, H, bk, bq) @ (B, H, bq, Dv) -> (B, H, bk, Dv)
            dp = do_i @ v_j.transpose(-2, -1)  # (B, H, bq, Dv) @ (B, H, Dv, bk) -> (B, H, bq, bk)
            ds = p * (dp - delta_i) * scale  # (B, H, bq, bk): softmax backward, then d(s)/d(qk) = scale
            dq_i += ds @ k_j  # (B, H, bq, bk) @ (B, H, bk, D) -> (B, H, bq, D)
            dk[:, :, k_start:k_end] += ds.transpose(-2, -1) @ q_i  # (B, H, bk, bq) @ (B, H, bq, D) -> (B, H, bk, D)

        dq[:, :, q_start:q_end] = dq_i

    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    ### END SOLUTION


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: forward runs flash_attention_forward and saves
    q, k, v, out and lse (O(L) extra memory, no (Lq, Lk) tensor); backward runs
    flash_attention_backward. apply(q, k, v, causal, scale, block_q, block_k) -> out.
    The non-tensor arguments get no gradient (None)."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, block_q, block_k):
        ### BEGIN SOLUTION
        out, lse = flash_attention_forward(q, k, v, causal, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (causal, scale, block_q, block_k)
        return out
        ### END SOLUTION

    @staticmethod
    def backward(ctx, grad_out):
        ### BEGIN SOLUTION
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, out, lse, grad_out, *ctx.settings)
        return dq, dk, dv, None, None, None, None
        ### END SOLUTION


def flash_attention(q, k, v, causal=False, scale=None, block_q=64, block_k=64):
    """softmax(q k^T * scale [+ causal mask]) v, tiled, differentiable:
    out (B, H, Lq, Dv) in q's dtype. Forward and backward both work block by
    block (FlashAttentionFunction). Same arguments and checks as
    flash_attention_forward."""
    ### BEGIN SOLUTION
    _check_inputs(q, k, v, causal, scale, block_q, block_k)
    return FlashAttentionFunction.apply(q, k, v, causal, scale, block_q, block_k)
    ### END SOLUTION


### BEGIN SOLUTION
def _finite_or_zero(m):
    """-inf (no visible key yet) -> 0, so exp(s - m) and exp(m_old - m) never see -inf - (-inf)."""
    return torch.where(torch.isinf(m), torch.zeros_like(m), m)


def _mask_block(s, q_start, q_end, k_start, k_end, q_len, k_len):
    """Set the scores of hidden (query, key) pairs of one block to -inf.

    s (B, H, bq, bk) holds rows [q_start, q_end) and keys [k_start, k_end).
    Bottom-right: row i sees key j iff j <= i + k_len - q_len. Only blocks that
    cross the diagonal need it: if even the block's first row sees its last
    key, the whole block is visible and is returned untouched."""
    offset = k_len - q_len
    if k_end - 1 <= q_start + offset:
        return s
    rows = torch.arange(q_start, q_end, device=s.device)[:, None]  # (bq, 1)
    cols = torch.arange(k_start, k_end, device=s.device)[None, :]  # (1, bk)
    return s.masked_fill(cols > rows + offset, -math.inf)  # (bq, bk) broadcasts over (B, H)


def _check_inputs(q, k, v, causal, scale, block_q, block_k):
    check_qkv(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, L, D), got shape {tuple(t.shape)}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    check_scale(scale)
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)


def _check_saved(q, v, out, lse, grad_out):
    B, H, Lq, _ = q.shape
    expected = (B, H, Lq, v.shape[-1])
    for name, t in (("out", out), ("grad_out", grad_out)):
        check_tensor(name, t)
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must have shape (B, H, Lq, Dv) = {expected}, got {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    check_tensor("lse", lse, dtypes=(torch.float32, torch.float64))
    if tuple(lse.shape) != (B, H, Lq):
        raise ValueError(f"lse must have shape (B, H, Lq) = {(B, H, Lq)}, got {tuple(lse.shape)}")
    if lse.device != q.device:
        raise ValueError(f"lse is on {lse.device} but q is on {q.device}")
### END SOLUTION
