"""repeat_kv with x.repeat(1, n_rep, 1, 1): tiles the heads, so query head h gets key/value head h % Hkv, not h // n_rep."""
MODULE = "gqa"


def repeat_kv(x, n_rep):
    check_tensor("x", x, min_dim=4, dtypes=None)
    check_positive_int("n_rep", n_rep)
    return x.repeat(1, n_rep, 1, 1)  # (B, Hkv * n_rep, L, D), but in the order 0 1 0 1 ... instead of 0 0 1 1 ...
