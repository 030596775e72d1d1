"""update writes k into both buffers (a copy-paste slip): the values are the keys."""
MODULE = "kv_cache"


class KVCache(KVCache):
    def update(self, k, v):
        return super().update(k, k)
