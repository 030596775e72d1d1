"""triton_softmax passes ALIGN = one 16-byte vector (16 // itemsize) without checking that it divides n_cols and the row strides: a row of 781 columns is cut to 776 (n_cols // ALIGN * ALIGN), and its tail is never read or written."""
MODULE = "fused_ops_triton"


def triton_softmax(x, block_size=None):
    _check_triton_input(x)
    _check_block_size(block_size)
    if x.numel() == 0:
        return torch.empty_like(x)
    x2, n_rows, n_cols = _as_rows(x)
    out = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    config = choose_config(n_rows, n_cols, x.dtype, block_size)
    if config.split:
        return split_rows_softmax(out, x2, config).view(x.shape)
    kernel = softmax_looped_kernel if config.looped else softmax_kernel
    with _device_of(x):
        kernel[launch_grid(n_rows, config, x.device)](
            out, x2, n_rows, n_cols, x2.stride(0), out.stride(0),
            BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, NUM_STAGES=config.num_stages,
            ALIGN=16 // x.element_size(),          # assumed, not checked: row_alignment() skipped
            num_warps=config.num_warps)
    return out.view(x.shape)
