"""L11 part 2 — paged decode attention in Triton: L10's split-KV kernel reading through a block table.

One decoding step of a batch of S sequences, one query each: q (S, H, D)
against keys and values that live in a pool of pages, k_pages, v_pages
(num_blocks, Hkv, block_size, D) (one layer of PagedKVCache, e.g.
cache.k_pages[layer]). Sequence s owns the blocks block_tables[s, :]
(int, -1 padded) and its first seq_lens[s] tokens exist: token t is in
physical block block_tables[s, t // block_size] at offset t % block_size.

It is L10's kernel (solutions/decode_attention_triton.py) with ONE change:
where L10 computes the address of key t of row b as

    K + b * stride_kb + hkv * stride_kh + t * stride_kn                (contiguous cache)

this kernel first looks the block up in the table, then addresses inside it:

    block = block_tables[s, t // BLOCK_SIZE]                           (one indirection)
    K + block * stride_kb + hkv * stride_kh + (t % BLOCK_SIZE) * stride_kn

Everything else is L10's: stage 1 runs grid (splits, S * Hkv, row blocks), a
program attends with the G = H // Hkv query heads of one KV group (packed into
the rows of one tile) to one split of one sequence's keys, reading each key
and value once; stage 2 (L10's _merge_kernel, reused as is) merges the splits'
partial outputs by their lse. With one split stage 1 writes the result itself.

Why the block table costs (almost) nothing:
- The table is read a tile at a time: BLOCK_N int32 entries (4 bytes per key)
  next to the tile's BLOCK_N * D * 2 * 2 bytes of K and V (512 bytes per key at
  D = 128, bf16): under 1 % more traffic, and the BLOCK_N / BLOCK_SIZE
  distinct entries of a tile share one or two cache lines.
- Inside a block, a KV head's BLOCK_SIZE keys are contiguous (BLOCK_SIZE * D
  elements), so the loads stay as wide and coalesced as L10's: each key row
  is D contiguous elements either way; only where a row starts changes.
- What a block size changes: a tile of BLOCK_N keys spans BLOCK_N / BLOCK_SIZE
  blocks (several small ones at block_size 16, a slice of one at 256), so
  small blocks mean more distinct table entries and more places the tile's
  rows come from; below ~8 keys per block the rows of one tile scatter over
  many DRAM pages. The GPU benchmark measures 16 and 256 against L10.

What is never read: table entries past a sequence's last block (the -1
padding), and slots past seq_len in its last block. Both are masked before
the load (they would otherwise read some other sequence's keys, or garbage).
A sequence of length 0 reads nothing and gets out 0, as paged_attention.

Exercise: _paged_split_kernel (stage 1). Given: the launchers, the checks, and
L10's merge kernel and split rule, imported from decode_attention_triton (so
finish L10 part 2 first).

Limits: one query per sequence (decoding; no causal mask needed), Dv == D
(k_pages and v_pages have one shape), head_dim 1..256, float16 / bfloat16 /
float32 (float32 matmuls in IEEE precision). Where it runs: CUDA, and CPU
tensors under TRITON_INTERPRET=1 at small shapes. Tested on an H200 (Triton
3.6, torch 2.11) and under the interpreter (Triton 3.9).
"""
import math

import torch
import triton
import triton.language as tl

from ._checks import check_num_splits, check_scale, check_tensor, check_triton_device, contiguous_last
from ._triton_constants import LN2, LOG2E  # the kernel works in log2 units; lse = log2-sum * ln(2)
from .decode_attention_triton import (GPU_CONFIG, INTERPRETED, INTERPRETER_CONFIG, INTERPRETER_SPLITS,
                                      MAX_BLOCK_M, _merge_kernel, _sm_count, choose_num_splits)


# ---------------------------------------------------------------------------
# Stage 1: one program = one split of one (sequence, KV head), all G query rows of its group.
# ---------------------------------------------------------------------------
@triton.jit
def _paged_split_kernel(Q, K_PAGES, V_PAGES, BLOCK_TABLES, SEQ_LENS, O_PART, LSE_PART,
                        stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_bt,
                        H, Hkv, S, chunk, qk_scale,
                        GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        DOT_PRECISION: tl.constexpr):
    """Partial attention of the query rows [row0, row0 + BLOCK_M) of KV group (s, hkv)
    over the tokens [split * chunk, (split + 1) * chunk) that exist for sequence s.

    q is contiguous (S, H, D): query head h of sequence s starts at (s * H + h) * D.
    The partials are contiguous (S, H, num_splits, D) and (S, H, num_splits): L10's
    layout with Lq = 1, so L10's merge kernel reads them, and with one split they
    are exactly out (S, H, D) and lse (S, H). Token t of sequence s is key row
    t % BLOCK_SIZE of physical block BLOCK_TABLES[s * stride_bt + t // BLOCK_SIZE]."""
    split = tl.program_id(0)
    off_skv = tl.program_id(1)
    off_s = off_skv // Hkv                                       # which sequence
    off_hkv = off_skv % Hkv                                      # which KV head of it
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM                                     # padding columns when D is not a power of 2
    ### BEGIN SOLUTION
    # -- this KV head's slice of every block: key row r of block p at base + p * stride_kb + r * stride_kn --
    k_head = K_PAGES + off_hkv.to(tl.int64) * stride_kh
    v_head = V_PAGES + off_hkv.to(tl.int64) * stride_vh
    table = BLOCK_TABLES + off_s.to(tl.int64) * stride_bt        # this sequence's row of the block table

    # -- which query rows this tile holds: row r is head hkv * G + r (the interleaved GQA map, as
    #    repeat_interleave: heads hkv*G .. hkv*G + G - 1 share KV head hkv) --
    offs_r = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    r_ok = offs_r < GROUP                                        # padding rows of the tile (G < 16)
    off_h = off_hkv * GROUP + offs_r                             # (BLOCK_M,) query head of each row
    row = off_s.to(tl.int64) * H + off_h                         # (BLOCK_M,) index of (s, h) in (S, H)

    # -- this sequence's length and the token range of this split --
    seq_len = tl.load(SEQ_LENS + off_s).to(tl.int32)             # tokens t >= seq_len do not exist
    lo = split * chunk
    hi = tl.minimum(lo + chunk, seq_len)                         # empty (lo >= hi) for a short sequence's late splits

    # -- q stays in registers for the whole loop: (BLOCK_M, BLOCK_D), read once --
    q = tl.load(Q + row[:, None] * HEAD_DIM + offs_d[None, :], mask=r_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                 # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)        # running sum of exp2(s - m_i) v

    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0                               # (BLOCK_N,) logical token positions
        n_ok = offs_n < hi                                       # past seq_len (or the split): never read
        # -- the indirection: logical block t // BLOCK_SIZE -> physical block, from the table.
        #    Masked: a -1 padding entry (past the last block) is never loaded, and never used --
        block = tl.load(table + offs_n // BLOCK_SIZE, mask=n_ok, other=0)   # (BLOCK_N,) int32
        # -- where each key row starts: its block, then its offset in the block (int64: a pool of
        #    num_blocks * Hkv * BLOCK_SIZE * D elements can pass 2^31) --
        k_rows = block.to(tl.int64) * stride_kb + (offs_n % BLOCK_SIZE).to(tl.int64) * stride_kn
        v_rows = block.to(tl.int64) * stride_vb + (offs_n % BLOCK_SIZE).to(tl.int64) * stride_vn
        # -- load K (BLOCK_N, BLOCK_D) and V (BLOCK_N, BLOCK_D): the only HBM traffic that matters.
        #    Each row is D contiguous elements, as in L10: the loads stay wide and coalesced --
        k = tl.load(k_head + k_rows[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_head + v_rows[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        # -- qk = q k^T * scale * log2(e): (BLOCK_M, D) @ (D, BLOCK_N) -> (BLOCK_M, BLOCK_N) --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        qk = tl.where(n_ok[None, :], qk, float("-inf"))          # the masked keys (loaded as 0) do not exist
        # -- online softmax: new max; a row that has seen nothing yet keeps -inf, guarded to 0 --
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)    # exp2(-inf - (-inf)) would be NaN
        p = tl.math.exp2(qk - m_safe[:, None])                   # (BLOCK_M, BLOCK_N), 0 where masked
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
# Launch configuration: L10's, imported (decode_attention_triton.GPU_CONFIG: BLOCK_N keys
# per step, warps and pipeline stages as L10 measured them best on an H200), so the
# benchmark's ratio against the contiguous kernel measures the block table and nothing
# else. A tile of 128 keys spans 8 blocks of 16, or half a block of 256: the kernel does
# not care, every key row is addressed through the table on its own. The split count is L10's rule
# (choose_num_splits) applied to the table's width in tokens, the longest a sequence
# of this batch can be; a shorter sequence's late splits are empty (lse -inf, merged
# to nothing). Under the interpreter: L10's 16-key tiles and 3 splits.
# ---------------------------------------------------------------------------


def _check_inputs(q, k_pages, v_pages, block_tables, seq_lens, scale, num_splits):
    """Shapes, dtypes and devices without touching the GPU's data; then one host sync for the
    values (lengths in range, table entries a sequence reads inside the pool)."""
    check_tensor("q", q, dtypes=(torch.float16, torch.bfloat16, torch.float32))
    if q.dim() != 3:
        raise ValueError(f"q must be (S, H, D), one query per sequence, got shape {tuple(q.shape)}")
    for name, pages in (("k_pages", k_pages), ("v_pages", v_pages)):
        check_tensor(name, pages, dtypes=(torch.float16, torch.bfloat16, torch.float32))
        if pages.dim() != 4:
            raise ValueError(f"{name} must be one layer's pages (num_blocks, Hkv, block_size, D), got shape "
                             f"{tuple(pages.shape)}")
        if pages.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {pages.dtype}")
        if pages.device != q.device:
            raise ValueError(f"{name} is on {pages.device} but q is on {q.device}")
    if k_pages.shape != v_pages.shape:
        raise ValueError(f"v_pages {tuple(v_pages.shape)} must have k_pages' shape {tuple(k_pages.shape)} "
                         f"(this kernel needs Dv == D)")
    (S, H, D), (num_blocks, Hkv, bs, Dk) = q.shape, k_pages.shape
    if Dk != D:
        raise ValueError(f"q has head_dim {D} but k_pages has {Dk}")
    if H % Hkv:
        raise ValueError(f"q's {H} heads must be a multiple of k_pages' {Hkv} KV heads (GQA groups)")
    if not 1 <= D <= 256:
        raise ValueError(f"head_dim must be in 1..256 for this kernel, got {D}")
    for name, t, dims in (("block_tables", block_tables, 2), ("seq_lens", seq_lens, 1)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a {dims}-D integer tensor, got {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{name} must have an integer dtype, got {t.dtype}")
        if t.dim() != dims or t.shape[0] != S:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {dims}-D with one row per sequence "
                             f"of q ({S})")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    check_scale(scale)
    check_num_splits(num_splits)
    check_triton_device(q, INTERPRETED)
    if S == 0:
        return
    # -- the values: a handful of small ops, then one host sync for all of them (a wrong entry would
    #    read outside the pool). Eager decoding pays this per call; a CUDA graph replays the launches only --
    width = block_tables.shape[1]
    lens = seq_lens.to(torch.int64)
    starts = torch.arange(0, width * bs, bs, device=q.device)                # first token of each logical block
    used = starts[None, :] < lens[:, None]                                   # (S, width): blocks a sequence reads
    bad = ((block_tables.clamp(0, num_blocks - 1) != block_tables) & used).any()   # outside [0, num_blocks)
    low, high = torch.aminmax(lens)
    low, high, any_bad = torch.stack([low, high, bad.to(torch.int64)]).tolist()
    if low < 0 or high > width * bs:
        raise ValueError(f"seq_lens must lie in [0, max_blocks * block_size = {width * bs}], got "
                         f"{seq_lens.tolist()}")
    if any_bad:
        raise ValueError(f"block_tables refers to blocks outside [0, {num_blocks}) within seq_lens (a -1 entry "
                         f"is padding, allowed only past a sequence's last block)")


def launch_paged_attention(q, k_pages, v_pages, block_tables, seq_lens, scale=None, num_splits=None):
    """The launches of triton_paged_attention without its checks: no host sync, so a decode
    loop (and the benchmark) can capture it in a CUDA graph. Takes what the checks accept,
    with block_tables and seq_lens int32 and contiguous (as PagedKVCache returns them)."""
    q = q.contiguous()                                     # (S, H, D): tiny, usually contiguous already
    k_pages, v_pages = contiguous_last(k_pages), contiguous_last(v_pages)   # D must be unit-stride
    S, H, D = q.shape
    num_blocks, Hkv, bs, _ = k_pages.shape
    G = H // Hkv
    out = torch.empty_like(q)                              # every element is written by the kernels
    if out.numel() == 0:
        return out
    lse = torch.empty((S, H), device=q.device, dtype=torch.float32)
    config = INTERPRETER_CONFIG if INTERPRETED else GPU_CONFIG
    block_n = config["BLOCK_N"]
    longest = block_tables.shape[1] * bs                   # the most tokens a sequence of this batch can hold
    if num_splits is None:
        num_splits = (INTERPRETER_SPLITS if q.device.type == "cpu"
                      else choose_num_splits(S, Hkv, longest, _sm_count(q.device.index or 0)))
    # tokens per split, whole tiles (so only a split's last tile is partial)
    chunk = max(block_n, triton.cdiv(triton.cdiv(max(longest, 1), num_splits), block_n) * block_n)
    block_m = max(16, min(MAX_BLOCK_M, triton.next_power_of_2(G)))
    block_d = max(16, triton.next_power_of_2(D))

    if num_splits == 1:  # nothing to merge: stage 1 writes out and lse itself (same layout)
        o_part, lse_part = out, lse
    else:                # partials (S, H, num_splits, D) and (S, H, num_splits), float32, one allocation
        part = torch.empty(S * H * num_splits * (D + 1), device=q.device, dtype=torch.float32)
        o_part, lse_part = part[:S * H * num_splits * D], part[S * H * num_splits * D:]

    grid = (num_splits, S * Hkv, triton.cdiv(G, block_m))
    _paged_split_kernel[grid](
        q, k_pages, v_pages, block_tables, seq_lens, o_part, lse_part,
        *k_pages.stride()[:3], *v_pages.stride()[:3], block_tables.stride(0), H, Hkv, num_splits, chunk,
        (1.0 / math.sqrt(D) if scale is None else float(scale)) * LOG2E.value,
        GROUP=G, BLOCK_SIZE=bs, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=block_m,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **config)
    if num_splits > 1:   # L10's stage 2, unchanged: rows (s, h) instead of (b, h, i)
        _merge_kernel[(S * H,)](o_part, lse_part, out, lse, num_splits, HEAD_DIM=D, BLOCK_D=block_d,
                                BLOCK_S=triton.next_power_of_2(num_splits), num_warps=1 if INTERPRETED else 4)
    return out


def triton_paged_attention(q, k_pages, v_pages, block_tables, seq_lens, scale=None, num_splits=None):
    """out = attention of q (S, H, D), one query per sequence, over its paged keys and values.

    k_pages, v_pages (num_blocks, Hkv, block_size, D): one layer's pages (cache.k_pages[layer]);
    block_tables int (S, max_blocks), -1 padded; seq_lens int (S,). As paged_attention
    (solutions/paged_kv_cache.py): sequence s attends to its first seq_lens[s] tokens, token t
    in block block_tables[s, t // block_size] at offset t % block_size; query head h reads KV
    head h // (H // Hkv); a sequence of length 0 gives zeros. Returns (S, H, D) in q's dtype.
    num_splits: None chooses it (L10's rule); an int forces it. Checks its arguments (one host
    sync, for the lengths and table entries), then calls launch_paged_attention.
    """
    _check_inputs(q, k_pages, v_pages, block_tables, seq_lens, scale, num_splits)
    # the kernel reads BLOCK_TABLES[s * stride + j] and SEQ_LENS[s] as int32 (PagedKVCache's dtype already)
    block_tables = block_tables.to(torch.int32).contiguous()
    seq_lens = seq_lens.to(torch.int32).contiguous()
    return launch_paged_attention(q, k_pages, v_pages, block_tables, seq_lens, scale, num_splits)
