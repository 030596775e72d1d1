"""The kernel returns the numerator phi(q)^T S alone, without dividing by phi(q)·z + eps: the output grows with the position."""
MODULE = "linear_attention_triton"


@triton.jit
def _chunked_kernel(Q, K, V, Out, DEN,
                    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
                    stride_vb, stride_vh, stride_vl, H, L, eps,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                    BLOCK_C: tl.constexpr, STORE_DEN: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Causal linear attention of one (batch, head), value columns [dv0, dv0 + BLOCK_DV).

    q, k, v (B, H, L, D) with unit stride on D; out (B, H, L, D) contiguous.
    Program (bh, j): batch bh // H, head bh % H, value columns j * BLOCK_DV ...
    STORE_DEN: also write the denominators phi(q_i)·z_i + eps, float32 (B, H, L), for the
    backward (program j = 0 only: every value block computes the same ones)."""
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
    dot_dtype = V.dtype.element_ty                               # half operands for the tensor cores (fp32: fp32)
    # within a chunk, query i sees key j <= i: the same local index, both in this chunk.
    # The diagonal is included: a query sees its own key.
    causal = offs_c[:, None] >= offs_c[None, :]                  # (BLOCK_C, BLOCK_C)

    # -- the state, float32, in registers for the whole walk: never written to HBM --
    S = tl.zeros([BLOCK_D, BLOCK_DV], dtype=tl.float32)          # sum_j phi(k_j) v_j^T over earlier chunks
    z = tl.zeros([BLOCK_D], dtype=tl.float32)                    # sum_j phi(k_j) over earlier chunks

    for start in tl.range(0, L, BLOCK_C):                        # in order: chunk c needs the state of 0..c-1
        offs_l = start + offs_c                                  # (BLOCK_C,) positions of this chunk
        l_ok = offs_l < L                                        # the last chunk may be shorter
        row_ok = l_ok[:, None] & d_ok[None, :]                   # (BLOCK_C, BLOCK_D)
        # -- load Q_c, K_c (BLOCK_C, BLOCK_D) and V_c (BLOCK_C, BLOCK_DV): the only HBM reads --
        q = tl.load(q_base + offs_l[:, None].to(tl.int64) * stride_ql + offs_d[None, :], mask=row_ok, other=0.0)
        k = tl.load(k_base + offs_l[:, None].to(tl.int64) * stride_kl + offs_d[None, :], mask=row_ok, other=0.0)
        v = tl.load(v_base + offs_l[:, None].to(tl.int64) * stride_vl + offs_dv[None, :],
                    mask=l_ok[:, None] & dv_ok[None, :], other=0.0)
        # -- feature map in float32; padding is set to 0, NOT phi(0) = 1, which would add a fake feature
        #    to every score (padded D columns) and fake keys to the state (padded rows of the last chunk) --
        phi_q = tl.where(row_ok, _elu_plus_one(q.to(tl.float32)), 0.0)
        phi_k = tl.where(row_ok, _elu_plus_one(k.to(tl.float32)), 0.0)

        phi_k_dot = phi_k.to(dot_dtype)                         # the operand S is built from (z sums the same)

        # -- intra-chunk, quadratic: A = tril(phi(Q_c) phi(K_c)^T): (C, D) @ (D, C) -> (C, C) --
        a = tl.dot(phi_q.to(dot_dtype), tl.trans(phi_k_dot), input_precision=DOT_PRECISION)
        a = tl.where(causal, a, 0.0).to(dot_dtype)               # a hidden key weighs 0 in BOTH sums (not -inf)
        # numerator: A V_c (C, C) @ (C, BLOCK_DV)  +  phi(Q_c) S (C, D) @ (D, BLOCK_DV), float32 accumulator
        num = tl.dot(a, v, input_precision=DOT_PRECISION)
        num = tl.dot(phi_q, S, num, input_precision=DOT_PRECISION)  # S stays float32: tf32 operands, no overflow
        # denominator: A 1 + phi(Q_c)·z + eps, in float32 (row sums, not a matmul: one column would waste a dot).
        # The row sums add the SAME rounded A the numerator multiplies: numerator and denominator then weigh
        # each key alike and the output stays a convex mix of values (rounding moves the weights, not the scale)
        den = tl.sum(a.to(tl.float32), 1) + tl.sum(phi_q * z[None, :], 1) + eps    # (BLOCK_C,)
        out = num  # BUG: no normaliser
        if STORE_DEN:
            if tl.program_id(1) == 0:
                tl.store(DEN + off_bh.to(tl.int64) * L + offs_l, den, mask=l_ok)
        tl.store(o_base + offs_l[:, None].to(tl.int64) * HEAD_DIM + offs_dv[None, :],
                 out.to(Out.dtype.element_ty), mask=l_ok[:, None] & dv_ok[None, :])

        # -- inter-chunk: fold this chunk into the state, AFTER its output (else it would be counted twice) --
        S = tl.dot(tl.trans(phi_k_dot), v, S, input_precision=DOT_PRECISION)  # (D, C) @ (C, BLOCK_DV)
        z += tl.sum(phi_k_dot.to(tl.float32), 0)                 # (BLOCK_D,) the same rounded features as S
