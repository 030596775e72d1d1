"""triton_softmax passes n_cols as the row stride (assuming a contiguous input): a column slice or every other row of a wider tensor reads the wrong elements."""
MODULE = "fused_ops_triton"


def triton_softmax(x, block_size=None):
    _check_triton_input(x)
    _check_block_size(block_size)
    if x.numel() == 0:
        return torch.empty_like(x)
    x2, n_rows, n_cols = _as_rows(x)
    out = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    config = choose_config(n_rows, n_cols, x.dtype, block_size)
    kernel = softmax_looped_kernel if config.looped else softmax_kernel
    with _device_of(x):
        kernel[launch_grid(n_rows, config, x.device)](
            out, x2, n_rows, n_cols, n_cols, n_cols,  # row strides taken as n_cols: x2.stride(0) ignored
            BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, NUM_STAGES=config.num_stages,
            ALIGN=row_alignment(n_cols, itemsize=x.element_size()), num_warps=config.num_warps)
    return out.view(x.shape)
