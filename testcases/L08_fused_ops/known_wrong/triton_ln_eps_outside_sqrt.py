"""The Triton layer norm adds eps after the square root: rstd = 1 / (sqrt(var) + eps) instead of 1 / sqrt(var + eps)."""
MODULE = "fused_ops_triton"


@triton.jit
def layer_norm_kernel(out_ptr, x_ptr, w_ptr, b_ptr, n_rows, n_cols, stride_xm, stride_om, eps,
                      HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)                      # (BLOCK_M,)
    offs_n = tl.arange(0, BLOCK_N)                                      # (BLOCK_N,)
    col_mask = offs_n < n_cols
    mask = (offs_m[:, None] < n_rows) & col_mask[None, :]               # (BLOCK_M, BLOCK_N)
    rows = offs_m.to(tl.int64)[:, None]
    # -- load: the one read of x; padding reads as 0 so it adds nothing to the sum --
    x = tl.load(x_ptr + rows * stride_xm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    # -- statistics: two passes over the row, but over registers, not memory --
    mean = tl.sum(x, axis=1) / n_cols                                   # (BLOCK_M,)
    xc = tl.where(mask, x - mean[:, None], 0.0)                         # padding would add (0 - mean)^2
    var = tl.sum(xc * xc, axis=1) / n_cols                              # biased, as nn.LayerNorm
    rstd = 1.0 / (tl.sqrt(var) + eps)                                   # eps outside the root
    y = xc * rstd[:, None]                                              # x_hat, (BLOCK_M, BLOCK_N)
    # -- affine: w and b are (n_cols,), shared by every row of the tile --
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(b_ptr + offs_n, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows * stride_om + offs_n[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
