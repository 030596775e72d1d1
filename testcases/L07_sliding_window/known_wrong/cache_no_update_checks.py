"""update does not check its input: a chunk of another batch, head count or dtype fails inside torch, or worse."""
MODULE = "sliding_window"


def check_cache_update(cache, k, v):
    pass
