"""FlashAttentionFunction.backward forgets to pass causal on: the forward is causal, the gradients are those of full attention."""
MODULE = "flash_attention"


def _backward(ctx, grad_out):
    q, k, v, out, lse = ctx.saved_tensors
    causal, scale, block_q, block_k = ctx.settings
    dq, dk, dv = flash_attention_backward(q, k, v, out, lse, grad_out, False, scale, block_q, block_k)  # BUG
    return dq, dk, dv, None, None, None, None


FlashAttentionFunction.backward = staticmethod(_backward)
