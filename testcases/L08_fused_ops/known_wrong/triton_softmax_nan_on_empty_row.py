"""The Triton softmax has no guard for a row that is entirely -inf: max = -inf, x - max = nan, and the row comes out NaN instead of 0."""
MODULE = "fused_ops_triton"


@triton.jit
def softmax_kernel(out_ptr, x_ptr, n_rows, n_cols, stride_xm, stride_om,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < n_rows) & (offs_n[None, :] < n_cols)
    rows = offs_m.to(tl.int64)[:, None]
    x = tl.load(x_ptr + rows * stride_xm + offs_n[None, :], mask=mask, other=float("-inf")).to(tl.float32)
    m_i = tl.max(x, axis=1)
    p = tl.exp(x - m_i[:, None])
    l_i = tl.sum(p, axis=1)
    out = p / l_i[:, None]
    tl.store(out_ptr + rows * stride_om + offs_n[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def softmax_looped_kernel(out_ptr, x_ptr, n_rows, n_cols, stride_xm, stride_om,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = offs_m < n_rows
    rows = offs_m.to(tl.int64)[:, None]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask = row_mask[:, None] & (offs_n[None, :] < n_cols)
        x = tl.load(x_ptr + rows * stride_xm + offs_n[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m_i, tl.max(x, axis=1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
        m_i = m_new
    for start in range(0, n_cols, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask = row_mask[:, None] & (offs_n[None, :] < n_cols)
        x = tl.load(x_ptr + rows * stride_xm + offs_n[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        out = tl.exp(x - m_i[:, None]) / l_i[:, None]
        tl.store(out_ptr + rows * stride_om + offs_n[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
