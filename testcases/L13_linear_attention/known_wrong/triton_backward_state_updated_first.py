"""The dk/dv scan folds a chunk's queries into R, r before the chunk's keys read them: each chunk's own queries count twice in dk and dv (the intra-chunk block and the state)."""
MODULE = "linear_attention_triton"
CAUGHT_BY = "advanced"


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
    causal = offs_c[:, None] >= offs_c[None, :]                  # rows: queries i, columns: keys j
    R = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)          # later chunks' sum_i phi(q_i) dnum_i^T
    r = tl.zeros([BLOCK_D], dtype=tl.float32)                   # later chunks' sum_i phi(q_i) dden_i
    num_chunks = tl.cdiv(L, BLOCK_C)
    for step in tl.range(0, num_chunks):
        offs_l = (num_chunks - 1 - step) * BLOCK_C + offs_c      # the last chunk first
        l_ok = offs_l < L
        row_ok = l_ok[:, None] & d_ok[None, :]
        q = _load_chunk(Q + b64 * stride_qb + h64 * stride_qh, offs_l, stride_ql, offs_d, row_ok).to(tl.float32)
        k = _load_chunk(K + b64 * stride_kb + h64 * stride_kh, offs_l, stride_kl, offs_d, row_ok).to(tl.float32)
        v = _load_chunk(V + b64 * stride_vb + h64 * stride_vh, offs_l, stride_vl, offs_d, row_ok).to(tl.float32)
        o = _load_chunk(Out + off_bh.to(tl.int64) * L * HEAD_DIM, offs_l, HEAD_DIM, offs_d, row_ok).to(tl.float32)
        do = _load_chunk(DO + b64 * stride_ob + h64 * stride_oh, offs_l, stride_ol, offs_d, row_ok).to(tl.float32)
        den = tl.load(DEN + off_bh.to(tl.int64) * L + offs_l, mask=l_ok, other=1.0)
        phi_q = tl.where(row_ok, _elu_plus_one(q), 0.0)
        phi_k = tl.where(row_ok, _elu_plus_one(k), 0.0)
        dnum = do / den[:, None]
        dden = -tl.sum(do * o, 1) / den
        R = tl.dot(tl.trans(phi_q), dnum, R, input_precision=DOT_PRECISION)  # BUG: before this chunk's keys use R
        r += tl.sum(phi_q * dden[:, None], 0)
        # A_ij = phi(q_i)·phi(k_j) and g_ij = v_j·dnum_i + dden_i, both kept for i >= j: (C, C)
        a = tl.where(causal, tl.dot(phi_q, tl.trans(phi_k), input_precision=DOT_PRECISION), 0.0)
        g = tl.where(causal, tl.dot(dnum, tl.trans(v), input_precision=DOT_PRECISION) + dden[:, None], 0.0)
        # dv = A^T dnum + phi(K_c) R: (C, C) @ (C, Dv) plus (C, D) @ (D, Dv)
        dv = tl.dot(tl.trans(a), dnum, input_precision=DOT_PRECISION)
        dv = tl.dot(phi_k, R, dv, input_precision=DOT_PRECISION)
        # dphi(k) = g^T phi(Q_c) + V_c R^T + r: (C, C) @ (C, D) plus (C, Dv) @ (Dv, D)
        dphi_k = tl.dot(tl.trans(g), phi_q, input_precision=DOT_PRECISION)
        dphi_k = tl.dot(v, tl.trans(R), dphi_k, input_precision=DOT_PRECISION) + r[None, :]
        dk = dphi_k * _elu_plus_one_grad(k)
        row = off_bh.to(tl.int64) * L * HEAD_DIM + offs_l[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
        tl.store(DK + row, dk.to(DK.dtype.element_ty), mask=row_ok)
        tl.store(DV + row, dv.to(DV.dtype.element_ty), mask=row_ok)
