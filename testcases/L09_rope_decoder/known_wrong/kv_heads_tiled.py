"""Repeats the key/value heads with .repeat (tiled, head h % Hkv) instead of repeat_interleave (h // n_rep)."""
MODULE = "decoder"


def repeat_kv(x, n_rep):
    return x.repeat(1, n_rep, 1, 1)
