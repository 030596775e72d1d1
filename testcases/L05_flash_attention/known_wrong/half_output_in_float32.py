"""Computes float16/bfloat16 inputs in float32 but returns out in float32 instead of the input dtype."""
MODULE = "flash_attention"

_solution_forward = flash_attention_forward


def flash_attention_forward(q, k, v, causal=False, scale=None, block_q=64, block_k=64):
    _check_inputs(q, k, v, causal, scale, block_q, block_k)
    dtype = compute_dtype(q.dtype)
    return _solution_forward(q.to(dtype), k.to(dtype), v.to(dtype), causal, scale, block_q, block_k)  # BUG: no cast back
