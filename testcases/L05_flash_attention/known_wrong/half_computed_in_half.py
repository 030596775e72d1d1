"""float16/bfloat16 inputs computed in their own dtype (scores, exp, m_i, l_i and acc rounded to half at every
step) instead of float32, with only the returned lse cast up: the text's rule is to cast q, k, v up once."""
MODULE = "flash_attention"

_correct_forward = flash_attention_forward


def flash_attention_forward(q, k, v, causal=False, scale=None, block_q=64, block_k=64):
    out, lse = _half_forward(q, k, v, causal, scale, block_q, block_k)
    return out, lse.float() if lse.dtype in (torch.float16, torch.bfloat16) else lse


def _half_forward(q, k, v, causal, scale, block_q, block_k):
    global compute_dtype
    saved = compute_dtype
    compute_dtype = lambda dtype: dtype  # BUG: no float32 for half inputs
    try:
        return _correct_forward(q, k, v, causal, scale, block_q, block_k)
    finally:
        compute_dtype = saved
