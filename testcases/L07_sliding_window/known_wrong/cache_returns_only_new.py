"""update stores the new entries but returns only them: a decoding query sees itself and nothing before it."""
MODULE = "sliding_window"


class RollingKVCache(RollingKVCache):
    def update(self, k, v):
        super().update(k, v)
        return k, v
