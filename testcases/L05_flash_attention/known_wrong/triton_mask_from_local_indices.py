"""The tile's mask built from the local column index c of the tile instead of the absolute key index
start_n + c: right for the first key tile only."""
MODULE = "flash_attention_triton"


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
               pos_m, offs_d, lo, hi, Lk, window, qk_scale,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
               DOT_PRECISION: tl.constexpr):
    offs_n0 = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM                                   # padding columns when D is not a power of 2
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        # -- load K^T (BLOCK_D, BLOCK_N) and V (BLOCK_N, BLOCK_D): the only HBM reads of the loop --
        kt_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None]
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        if MASKED:
            n_ok = offs_n < Lk
            kt = tl.load(kt_ptrs, mask=d_ok[:, None] & n_ok[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        elif HEAD_DIM != BLOCK_D:
            kt = tl.load(kt_ptrs, mask=d_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        # -- compute qk = q k^T * scale * log2(e): (BLOCK_M, D) @ (D, BLOCK_N) -> (BLOCK_M, BLOCK_N) --
        qk = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            # BUG: offs_n0 = arange(BLOCK_N) is the tile's local column index; the key is start_n + c (offs_n)
            qk = tl.where(_visible(pos_m, offs_n0, Lk, window, CAUSAL, WINDOWED), qk, float("-inf"))
        # -- new running max; a row that has seen no key yet keeps m = -inf --
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        if MASKED:
            m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # exp2(-inf - (-inf)) would be NaN
        else:
            m_new_safe = m_new                                         # every row saw a finite score
        p = tl.math.exp2(qk - m_new_safe[:, None])                     # (BLOCK_M, BLOCK_N), in [0, 1]
        # -- rescale what was accumulated under the old max, then add this tile --
        alpha = tl.math.exp2(m_i - m_new_safe)                         # 0 when m_i = -inf
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        # (BLOCK_M, BLOCK_N) @ (BLOCK_N, D) -> (BLOCK_M, D); P is rounded to V's dtype, as in FlashAttention
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i
