"""L10 — Decode attention: one query against a long cache, split over the keys.

A decoding step has Lq = 1 query row (a few with speculative decoding) and a
cache of T keys and values per KV head. Attention is then a matrix-vector
product: every byte of K and V is read once and used for 2 FLOPs, so the step
is bound by memory bandwidth, not by arithmetic. To read the cache at full
speed a GPU needs thousands of loads in flight, i.e. many programs; but one
query per (batch, head) gives only B·H independent rows. Flash-decoding
(Dao et al., 2023) makes more work items by cutting the KEYS into num_splits
chunks: each chunk is attended independently, giving a partial output and its
logsumexp, and the partials are merged exactly afterwards.

The merge is L02's online softmax one level up. For disjoint key sets A and B,
with lse_X = log sum_{j in X} exp(s_j) and out_X = sum_{j in X} softmax_X(s)_j v_j:

    lse   = log(exp(lse_A) + exp(lse_B))                   = m + log(e^(lse_A - m) + e^(lse_B - m)),  m = max
    out   = (e^(lse_A - lse) out_A + e^(lse_B - lse) out_B)

because e^(lse_X - lse) is the share of the total softmax mass that X holds.
An empty part has lse = -inf (log 0) and weight exactly 0. The merge is
commutative and associative (up to rounding), so the splits can be merged in
any order, or as a tree.

Shapes (course-wide letters, T = cache length = Lk):
    q (B, H, Lq, D), k (B, Hkv, T, D), v (B, Hkv, T, Dv) -> out (B, H, Lq, Dv), lse (B, H, Lq)

Conventions (tutorial/CONVENTIONS.md, "Decode attention"):
- kv_lens (B,) int: row b's cache holds kv_lens[b] valid keys; keys j >= kv_lens[b]
  do not exist (a ragged batch in one padded tensor). None means T for every row.
- Query i of Lq sits at position kv_lens[b] - Lq + i and sees keys j <= that
  position (bottom-right causal, as L03): the Lq new tokens are the LAST ones.
  With Lq = 1 that is every valid key.
- GQA: query head h reads key/value head h // (H // Hkv) (repeat_interleave).
- A row that sees no key gives out 0 and lse -inf, never NaN.
- lse is the natural log, float32 (float64 for float64 inputs); half inputs are
  computed in float32 and the output is returned in q's dtype.

Exercises: merge_partials, split_kv_attention. Given: split_bounds.
"""
import math
import numbers

import torch

from ._checks import check_kv_lens, check_positive_int, check_scale, check_tensor, compute_dtype


def split_bounds(length, num_splits):
    """[(start, end)] of the num_splits chunks that cover keys 0 .. length - 1.

    Every chunk has ceil(length / num_splits) keys except the last non-empty
    one, which holds the remainder; chunks past the end are empty (start ==
    end). The Triton kernel of this lesson cuts its keys the same way.
    """
    chunk = -(-length // num_splits) if length else 0  # ceil division
    return [(min(s * chunk, length), min((s + 1) * chunk, length)) for s in range(num_splits)]


def merge_partials(out_a, lse_a, out_b, lse_b):
    """Merge two partial attentions over DISJOINT key sets into one.

    out_a, out_b (..., Lq, Dv): each part's softmax-normalised output over its
    own keys; lse_a, lse_b (..., Lq): each part's logsumexp of scores (natural
    log; -inf for a part with no visible key, whose out is ignored, even if it
    holds NaN). Returns (out, lse) of attention over the union:

        m   = max(lse_a, lse_b)               (0 where both are -inf)
        w_x = exp(lse_x - m)                  (0 for an empty part)
        lse = m + log(w_a + w_b)              (-inf when both parts are empty)
        out = (w_a out_a + w_b out_b) / (w_a + w_b)      (0 when both are empty)

    Statistics and the weighted sum are computed in float32 (float64 for
    float64 inputs); out comes back in out_a's dtype, lse in float32 (float64).
    Exactly commutative; associative up to rounding.

    Errors: non-tensors or non-float dtypes (TypeError naming the argument),
    out_a/out_b or lse_a/lse_b of different shapes, or lse not out's shape
    without its last dim (ValueError naming them).
    """
    ### BEGIN SOLUTION
    for name, x in (("out_a", out_a), ("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)):
        check_tensor(name, x, min_dim=0)
    if out_a.dim() < 1 or out_a.shape != out_b.shape:
        raise ValueError(f"out_a {tuple(out_a.shape)} and out_b {tuple(out_b.shape)} must have one shape (..., Lq, Dv)")
    if lse_a.shape != out_a.shape[:-1] or lse_b.shape != out_a.shape[:-1]:
        raise ValueError(f"lse_a {tuple(lse_a.shape)} and lse_b {tuple(lse_b.shape)} must be out's shape without "
                         f"its last dim, {tuple(out_a.shape[:-1])}")
    if len({out_a.device, out_b.device, lse_a.device, lse_b.device}) > 1:
        raise ValueError("out_a, lse_a, out_b, lse_b must be on one device")
    work = torch.float64 if torch.float64 in (out_a.dtype, out_b.dtype, lse_a.dtype, lse_b.dtype) else torch.float32
    la, lb = lse_a.to(work), lse_b.to(work)
    m = torch.maximum(la, lb)                                   # (..., Lq)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # both empty: exp(-inf - 0) = 0, not NaN
    w_a, w_b = torch.exp(la - m), torch.exp(lb - m)             # shares of the mass (up to a common factor)
    total = w_a + w_b
    empty = total == 0
    lse = torch.where(empty, torch.full_like(m, -math.inf), m + torch.log(torch.where(empty, 1.0, total)))
    # an empty part's out may hold anything (NaN included): select, never multiply it by 0
    part_a = torch.where(w_a[..., None] > 0, w_a[..., None] * out_a.to(work), 0.0)
    part_b = torch.where(w_b[..., None] > 0, w_b[..., None] * out_b.to(work), 0.0)
    out = (part_a + part_b) / torch.where(empty, 1.0, total)[..., None]  # (..., Lq, Dv)
    return out.to(out_a.dtype), lse
    ### END SOLUTION


def _check_inputs(q, k, v, num_splits, kv_lens, scale):
    """Shapes, dtypes, devices, num_splits, kv_lens and scale of split_kv_attention."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x)
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(x.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    (B, H, _, D), (Bk, Hkv, T, Dk) = q.shape, k.shape
    if Bk != B or v.shape[0] != B:
        raise ValueError(f"batch differs: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Dk != D:
        raise ValueError(f"q and k must have the same head_dim, got q {D} and k {Dk}")
    if v.shape[1:3] != k.shape[1:3]:
        raise ValueError(f"v {tuple(v.shape)} must match k {tuple(k.shape)} in heads and length (B, Hkv, T, Dv)")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"q's {H} heads must be a multiple of k/v's {Hkv} heads (GQA groups)")
    if isinstance(num_splits, bool) or not isinstance(num_splits, numbers.Integral):
        raise TypeError(f"num_splits must be an int, got {type(num_splits).__name__}")
    check_positive_int("num_splits", num_splits)
    check_scale(scale)
    check_kv_lens(kv_lens, B, T)


def split_kv_attention(q, k, v, num_splits, kv_lens=None, scale=None):
    """Attention of a few queries over a long cache, computed split by split.

    q (B, H, Lq, D), k (B, Hkv, T, D), v (B, Hkv, T, Dv) -> (out (B, H, Lq, Dv), lse (B, H, Lq)).

    The T keys are cut into num_splits chunks by split_bounds(T, num_splits)
    (ceil(T / num_splits) keys each, the last one shorter, trailing ones
    possibly empty). Each chunk is attended on its own, giving a partial
    (out_s, lse_s) with the usual softmax over ITS keys only; the partials are
    then combined with merge_partials. The result equals ordinary attention
    softmax(q k^T * scale + mask) v with

        key j visible from query i of row b   iff   j < kv_lens[b]  and  j <= kv_lens[b] - Lq + i

    GQA: the G = H // Hkv query heads of a KV group share its keys: query head
    h reads k[:, h // G] (do not copy K, V G times; reshape q to
    (B, Hkv, G, Lq, D) instead). A chunk with no visible key (empty, or past
    kv_lens[b]) has lse -inf and contributes nothing; a query that sees no key
    at all gets out 0, lse -inf. Scale defaults to 1/sqrt(D). Half inputs are
    computed in float32; out in q's dtype, lse float32 (float64 for float64).

    Errors (TypeError/ValueError naming the argument): q, k, v not 4-D float
    tensors of one dtype and device, batch/head_dim/length mismatches, H not a
    multiple of Hkv; num_splits not an int >= 1; kv_lens not an integer (B,)
    tensor with values in 0..T; scale not a finite float.
    """
    _check_inputs(q, k, v, num_splits, kv_lens, scale)
    B, H, Lq, D = q.shape
    Hkv, T, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G = H // Hkv
    ### BEGIN SOLUTION
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    work = compute_dtype(q.dtype)  # float32 for half inputs: scores, softmax and statistics
    lens = torch.full((B,), T, device=q.device) if kv_lens is None else kv_lens.to(q.device, torch.int64)
    # GQA packing: the G query heads of KV head g are rows of one (G * Lq, D) block (heads g*G .. g*G+G-1)
    qg = q.to(work).reshape(B, Hkv, G * Lq, D)              # (B, H, Lq, D) -> (B, Hkv, G*Lq, D)
    pos = (lens[:, None] - Lq + torch.arange(Lq, device=q.device)).repeat(1, G)  # (B, G*Lq): row -> position

    out = torch.zeros(B, Hkv, G * Lq, Dv, dtype=work, device=q.device)
    lse = torch.full((B, Hkv, G * Lq), -math.inf, dtype=torch.float32 if work != torch.float64 else work,
                     device=q.device)
    for start, end in split_bounds(T, num_splits):
        if start == end:
            continue  # an empty chunk: lse -inf, merging it changes nothing
        k_s, v_s = k[:, :, start:end].to(work), v[:, :, start:end].to(work)  # (B, Hkv, n, D), (B, Hkv, n, Dv)
        scores = qg @ k_s.transpose(-2, -1) * scale          # (B, Hkv, G*Lq, D) @ (B, Hkv, D, n) -> (B, Hkv, G*Lq, n)
        j = torch.arange(start, end, device=q.device)        # (n,) absolute key positions
        visible = (j[None, None, :] < lens[:, None, None]) & (j[None, None, :] <= pos[:, :, None])  # (B, G*Lq, n)
        scores = scores.masked_fill(~visible[:, None], -math.inf)
        # -- partial softmax over this chunk; a row that sees nothing here gets out 0, lse -inf --
        m = scores.amax(dim=-1)                               # (B, Hkv, G*Lq)
        m_safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
        p = torch.exp(scores - m_safe[..., None])             # (B, Hkv, G*Lq, n); exp(-inf) = 0 for hidden keys
        l = p.sum(dim=-1)                                     # (B, Hkv, G*Lq)
        out_s = (p @ v_s) / torch.where(l > 0, l, 1.0)[..., None]  # (B, Hkv, G*Lq, n) @ (B, Hkv, n, Dv)
        lse_s = torch.where(l > 0, m_safe + torch.log(torch.where(l > 0, l, 1.0)), -math.inf)
        # -- fold the chunk into the running result: the online softmax, one chunk at a time --
        out, lse = merge_partials(out, lse, out_s, lse_s.to(lse.dtype))
    return out.reshape(B, H, Lq, Dv).to(q.dtype), lse.reshape(B, H, Lq)
    ### END SOLUTION
