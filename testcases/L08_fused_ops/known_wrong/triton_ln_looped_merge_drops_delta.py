"""The looped Triton layer norm merges block statistics without Chan's delta^2 * n_a * n_b / n term: M2 = M2_a + M2_b ignores how far the block means are apart."""
MODULE = "fused_ops_triton"


@triton.jit
def layer_norm_looped_kernel(out_ptr, x_ptr, w_ptr, b_ptr, n_rows, n_cols, stride_xm, stride_om, eps,
                             HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
                   ALIGN: tl.constexpr):
    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = offs_m < n_rows
        rows = offs_m.to(tl.int64)[:, None]
        x_rows = x_ptr + rows * stride_xm
        mean = tl.zeros([BLOCK_M], tl.float32)
        m2 = tl.zeros([BLOCK_M], tl.float32)
        for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):
            offs_n = start + tl.arange(0, BLOCK_N)
            col_mask = offs_n < n_cols
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(x_rows + offs_n[None, :], mask=mask, other=0.0,
                        eviction_policy="evict_last").to(tl.float32)
            n_b = tl.sum(col_mask.to(tl.float32), axis=0)
            mean_b = tl.sum(x, axis=1) / n_b
            xc = tl.where(mask, x - mean_b[:, None], 0.0)
            m2_b = tl.sum(xc * xc, axis=1)
            n_a = start * 1.0
            n_ab = n_a + n_b
            delta = mean_b - mean
            mean = mean + delta * (n_b / n_ab)
            m2 = m2 + m2_b
        rstd = 1.0 / tl.sqrt(m2 / n_cols + eps)
        out_rows = out_ptr + rows * stride_om
        for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):
            offs_n = start + tl.arange(0, BLOCK_N)
            col_mask = offs_n < n_cols
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(x_rows + offs_n[None, :], mask=mask, other=0.0,
                        eviction_policy="evict_first").to(tl.float32)
            y = (x - mean[:, None]) * rstd[:, None]
            if HAS_WEIGHT:
                y = y * tl.load(w_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            if HAS_BIAS:
                y = y + tl.load(b_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            tl.store(out_rows + offs_n[None, :], y.to(out_ptr.dtype.element_ty), mask=mask,
                     eviction_policy="evict_first")
