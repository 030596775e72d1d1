"""Right values, no skipping: under causal every key block is computed and the hidden ones are masked to -inf, doubling the work."""
MODULE = "flash_attention"
CAUGHT_BY = "advanced"


def visible_key_end(q_end, q_len, k_len, causal):
    return k_len  # BUG: the blocks above the diagonal are still visited (and fully masked)
