"""Returns lse in base 2 (m_i * log2(e) + log2(l_i), as exp2-based GPU kernels keep it) without converting back to natural log."""
MODULE = "flash_attention"

_solution_forward = flash_attention_forward


def flash_attention_forward(q, k, v, causal=False, scale=None, block_q=64, block_k=64):
    out, lse = _solution_forward(q, k, v, causal, scale, block_q, block_k)
    return out, lse / math.log(2)  # BUG: log2(sum exp(s)), not ln
