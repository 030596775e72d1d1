"""No guard for a row that sees no key in its split: exp2(-inf - (-inf)) = NaN in stage 1, which the merge spreads."""
MODULE = "decode_attention_triton"


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
        m_safe = m_new  # BUG    # exp2(-inf - (-inf)) would be NaN
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
