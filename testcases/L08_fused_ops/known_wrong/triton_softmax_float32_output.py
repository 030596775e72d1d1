"""triton_softmax allocates its output in float32 (the compute dtype) instead of the input's dtype."""
MODULE = "fused_ops_triton"

_right_softmax = triton_softmax


def triton_softmax(x, block_size=None):
    return _right_softmax(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, block_size)
