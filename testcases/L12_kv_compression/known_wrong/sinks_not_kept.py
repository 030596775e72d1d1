"""The sink cache keeps only the rolling window: the first tokens are evicted like any other (plain L07 window)."""
MODULE = "kv_eviction"


class SinkKVCache(SinkKVCache):
    def update(self, k, v):
        check_cache_update(self, k, v)
        k_all = torch.cat([self.k_recent, k], dim=2)
        v_all = torch.cat([self.v_recent, v], dim=2)
        keep = min(self.recent - 1, k_all.shape[2])
        self.k_recent, self.v_recent = k_all[:, :, k_all.shape[2] - keep:].clone(), v_all[:, :, v_all.shape[2] - keep:].clone()
        self.seq_len += k.shape[2]
        return k_all, v_all
