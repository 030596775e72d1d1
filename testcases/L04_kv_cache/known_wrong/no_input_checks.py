"""Skips the input checks: bad shapes surface as torch RuntimeErrors or silently wrong answers, not named errors."""
MODULE = "kv_cache"
CAUGHT_BY = "advanced"


def check_cache_update(cache, k, v):
    pass


def _check_forward(module, x, key_padding_mask, cache, causal):
    pass
