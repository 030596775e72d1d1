"""Keeps every position with torch.cat and returns the last window - 1 + n: right values, memory grows with L."""
MODULE = "sliding_window"


class RollingKVCache(RollingKVCache):
    def update(self, k, v):
        check_cache_update(self, k, v)
        if self.seq_len == 0:
            self.k_all, self.v_all = k.clone(), v.clone()
        else:
            self.k_all, self.v_all = torch.cat([self.k_all, k], dim=2), torch.cat([self.v_all, v], dim=2)
        start = max(0, self.seq_len - (self.window - 1))
        self.seq_len += k.shape[-2]
        return self.k_all[:, :, start:], self.v_all[:, :, start:]
