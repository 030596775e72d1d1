"""update does not check its input: a chunk of another batch, head count or dtype fails inside torch, or worse."""
MODULE = "sliding_window"


def _check_update(cache, k, v):
    pass
