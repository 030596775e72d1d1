"""The Triton softmax masks its load but pads the tail with 0 instead of -inf, so every padding column adds exp(0 - max) to the sum."""
MODULE = "fused_ops_triton"


@triton.jit
def softmax_kernel(out_ptr, x_ptr, n_rows, n_cols, stride_xm, stride_om,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
                   ALIGN: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    col_mask = offs_n < n_cols
    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (offs_m[:, None] < n_rows) & col_mask[None, :]
        rows = offs_m.to(tl.int64)[:, None]
        x = tl.load(x_ptr + rows * stride_xm + offs_n[None, :], mask=mask, other=0.0,
                    eviction_policy="evict_first")
        x = x.to(tl.float32)
        m_i = tl.max(x, axis=1)
        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
        p = tl.math.exp2((x - m_i[:, None]) * LOG2E)
        l_i = tl.sum(p, axis=1)
        inv_l = 1.0 / tl.where(l_i > 0.0, l_i, 1.0)
        out = p * inv_l[:, None]
        tl.store(out_ptr + rows * stride_om + offs_n[None, :], out.to(out_ptr.dtype.element_ty), mask=mask,
                 eviction_policy="evict_first")
