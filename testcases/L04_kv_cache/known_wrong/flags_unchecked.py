"""Reads causal and use_cache by truthiness: causal="no" is a causal call, use_cache=None quietly runs without the cache."""
MODULE = "kv_cache"
CAUGHT_BY = "advanced"


def check_flag(name, value):
    pass
