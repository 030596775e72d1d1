"""Casts lse to the input dtype: float16 lse loses the precision that the backward's exp(S - lse) needs."""
MODULE = "flash_attention"

_solution_forward = flash_attention_forward


def flash_attention_forward(q, k, v, causal=False, scale=None, block_q=64, block_k=64):
    out, lse = _solution_forward(q, k, v, causal, scale, block_q, block_k)
    return out, lse.to(q.dtype)  # BUG: lse must stay float32
