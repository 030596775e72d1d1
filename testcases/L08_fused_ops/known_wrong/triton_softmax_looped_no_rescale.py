"""The looped (online) Triton softmax updates the running max but never rescales the running sum by exp(m_old - m_new)."""
MODULE = "fused_ops_triton"


@triton.jit
def softmax_looped_kernel(out_ptr, x_ptr, n_rows, n_cols, stride_xm, stride_om,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
                   ALIGN: tl.constexpr):
    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = offs_m < n_rows
        rows = offs_m.to(tl.int64)[:, None]
        x_rows = x_ptr + rows * stride_xm
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):
            offs_n = start + tl.arange(0, BLOCK_N)
            mask = row_mask[:, None] & (offs_n[None, :] < n_cols)
            x = tl.load(x_rows + offs_n[None, :], mask=mask, other=float("-inf"),
                        eviction_policy="evict_last").to(tl.float32)
            m_new = tl.maximum(m_i, tl.max(x, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2((m_i - m_safe) * LOG2E)
            l_i = l_i + tl.sum(tl.math.exp2((x - m_safe[:, None]) * LOG2E), axis=1)
            m_i = m_new
        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
        inv_l = 1.0 / tl.where(l_i > 0.0, l_i, 1.0)
        out_rows = out_ptr + rows * stride_om
        for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):
            offs_n = start + tl.arange(0, BLOCK_N)
            mask = row_mask[:, None] & (offs_n[None, :] < n_cols)
            x = tl.load(x_rows + offs_n[None, :], mask=mask, other=float("-inf"),
                        eviction_policy="evict_first").to(tl.float32)
            out = tl.math.exp2((x - m_i[:, None]) * LOG2E) * inv_l[:, None]
            tl.store(out_rows + offs_n[None, :], out.to(out_ptr.dtype.element_ty), mask=mask,
                     eviction_policy="evict_first")
