"""No guard for rows that see no key in the epilogue: out = acc / l with l = 0 gives NaN (causal, Lq > Lk)."""
MODULE = "flash_attention_triton"


@triton.jit
def _fwd_kernel(Q, K, V, Out, LSE,
                stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                H, GROUP, Lq, Lk, window, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # Causal tiles near the end of the sequence have the most keys: hand them out
    # first so the last wave of programs is short ones (better load balance).
    tile = tl.program_id(0)
    if CAUSAL:
        tile = tl.cdiv(Lq, BLOCK_M) - 1 - tile
    start_m = tile * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    off_hkv = off_h // GROUP                  # GQA: heads h*G .. h*G+G-1 share key/value head h
    offset = Lk - Lq                          # bottom-right alignment

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    pos_m = offs_m + offset
    q_base = Q + off_b.to(tl.int64) * stride_qb + off_h * stride_qh
    k_base = K + off_b.to(tl.int64) * stride_kb + off_hkv * stride_kh
    v_base = V + off_b.to(tl.int64) * stride_vb + off_hkv * stride_vh

    # -- q stays in registers for the whole loop: read once from HBM --
    q_ok = (offs_m[:, None] < Lq) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=q_ok, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                 # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)        # running sum of exp2(s - m_i) v

    lo, mid_lo, mid_hi, hi = _key_tiles(start_m, offset, Lk, window, BLOCK_M, BLOCK_N, CAUSAL, WINDOWED)
    # -- left edge of the window: masked --
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, pos_m, offs_d,
                               lo, mid_lo, Lk, window, qk_scale, True, CAUSAL, WINDOWED,
                               HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    # -- the bulk: tiles every row sees whole, no mask arithmetic at all --
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, pos_m, offs_d,
                               mid_lo, mid_hi, Lk, window, qk_scale, False, CAUSAL, WINDOWED,
                               HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    # -- the diagonal and the key tail: masked --
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, pos_m, offs_d,
                               mid_hi, hi, Lk, window, qk_scale, True, CAUSAL, WINDOWED,
                               HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)

    # epilogue: out = acc / l, lse = ln(sum exp(s)) = (m + log2 l) * ln 2; an empty row gives 0 and -inf
    l_safe = l_i  # BUG: 0 / 0 for a row that saw no key
    out = acc / l_safe[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    o_base = Out + off_b.to(tl.int64) * stride_ob + off_h * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], out.to(Out.dtype.element_ty), mask=q_ok)
    tl.store(LSE + off_bh.to(tl.int64) * Lq + offs_m, lse, mask=offs_m < Lq)
