"""The dK/dV kernel sums the wrong query heads into a shared key/value head: h = g * Hkv + hkv (the
.repeat mapping, h % Hkv) instead of hkv * GROUP + g (h // GROUP, repeat_interleave)."""
MODULE = "flash_attention_triton"
CAUGHT_BY = "advanced"  # the Triton backward is graded in the advanced suite only


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, dOut, LSE, Delta, dK, dV,
                     stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                     stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                     H, Hkv, GROUP, Lq, Lk, window, sm_scale, qk_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    off_bh = tl.program_id(1)
    off_b = off_bh // Hkv
    off_hkv = off_bh % Hkv
    offset = Lk - Lq
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_ok = (offs_n[:, None] < Lk) & (offs_d[None, :] < HEAD_DIM)

    # -- K and V tiles stay on chip; dK and dV accumulate in float32 --
    k = tl.load(K + off_b.to(tl.int64) * stride_kb + off_hkv * stride_kh
                + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_ok, other=0.0)
    v = tl.load(V + off_b.to(tl.int64) * stride_vb + off_hkv * stride_vh
                + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    lo, mid_lo, mid_hi, hi = _query_tiles(start_n, offset, Lq, Lk, window, BLOCK_M, BLOCK_N, CAUSAL, WINDOWED)
    for g in range(GROUP):
        off_h = g * Hkv + off_hkv  # BUG: the heads of .repeat (h % Hkv), not of repeat_interleave
        q_base = Q + off_b.to(tl.int64) * stride_qb + off_h * stride_qh
        do_base = dOut + off_b.to(tl.int64) * stride_dob + off_h * stride_doh
        lse_base = LSE + (off_b * H + off_h).to(tl.int64) * Lq
        delta_base = Delta + (off_b * H + off_h).to(tl.int64) * Lq
        # masked left edge, whole tiles, masked right edge: as in the forward
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom,
                             offs_n, offs_d, lo, mid_lo, Lq, Lk, offset, window, qk_scale,
                             True, CAUSAL, WINDOWED, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom,
                             offs_n, offs_d, mid_lo, mid_hi, Lq, Lk, offset, window, qk_scale,
                             False, CAUSAL, WINDOWED, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom,
                             offs_n, offs_d, mid_hi, hi, Lq, Lk, offset, window, qk_scale,
                             True, CAUSAL, WINDOWED, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION)

    # epilogue: dS carried no softmax scale yet (dK = scale * dS^T Q)
    dk = dk * sm_scale
    tl.store(dK + off_b.to(tl.int64) * stride_dkb + off_hkv * stride_dkh
             + offs_n[:, None] * stride_dkn + offs_d[None, :], dk.to(dK.dtype.element_ty), mask=kv_ok)
    tl.store(dV + off_b.to(tl.int64) * stride_dvb + off_hkv * stride_dvh
             + offs_n[:, None] * stride_dvn + offs_d[None, :], dv.to(dV.dtype.element_ty), mask=kv_ok)
