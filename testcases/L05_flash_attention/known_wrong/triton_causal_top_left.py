"""Causal aligned top-left (query i sees keys j <= i) instead of bottom-right when Lq < Lk."""
MODULE = "flash_attention_triton"

_correct_forward = _forward


def _forward(q, k, v, causal, scale, window):
    if causal and q.shape[2] < k.shape[2]:
        k, v = k[:, :, :q.shape[2]], v[:, :, :q.shape[2]]
    return _correct_forward(q, k, v, causal, scale, window)
