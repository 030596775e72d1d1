"""Picks each query head's key/value head by index h % num_kv_heads (a gather), the tiled mapping instead of h // n_rep."""
MODULE = "gqa"

_reference_repeat_kv = repeat_kv


def repeat_kv(x, n_rep):
    _reference_repeat_kv(x, n_rep)  # same checks
    index = torch.arange(x.shape[1] * n_rep, device=x.device) % x.shape[1]
    return x.index_select(1, index)
