"""update returns (v_all, k_all): keys and values swapped, so the queries score against the values."""
MODULE = "kv_cache"


class KVCache(KVCache):
    def update(self, k, v):
        k_all, v_all = super().update(k, v)
        return v_all, k_all
