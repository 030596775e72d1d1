"""The Triton layer norm adds eps after the square root: rstd = 1 / (sqrt(var) + eps) instead of 1 / sqrt(var + eps)."""
MODULE = "fused_ops_triton"


@triton.jit
def layer_norm_kernel(out_ptr, x_ptr, w_ptr, b_ptr, n_rows, n_cols, stride_xm, stride_om, eps,
                      HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
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
                    eviction_policy="evict_first").to(tl.float32)
        mean = tl.sum(x, axis=1) / n_cols
        xc = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / n_cols
        rstd = 1.0 / (tl.sqrt(var) + eps)
        y = xc * rstd[:, None]
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            y = y + tl.load(b_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rows * stride_om + offs_n[None, :], y.to(out_ptr.dtype.element_ty), mask=mask,
                 eviction_policy="evict_first")
