"""GQA heads mapped with .repeat: query head h reads key/value head h % Hkv instead of h // (H // Hkv)."""
MODULE = "flash_attention_triton"

_correct_forward = _forward


def _forward(q, k, v, causal, scale, window):
    group = q.shape[1] // k.shape[1]
    return _correct_forward(q, k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1), causal, scale, window)
