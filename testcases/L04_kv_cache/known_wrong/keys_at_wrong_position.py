"""seq_len is advanced between the two writes, so the new keys land L_new positions too far (values are right)."""
MODULE = "kv_cache"


class KVCache(KVCache):
    def update(self, k, v):
        check_cache_update(self, k, v)
        start, end = self.seq_len, self.seq_len + k.shape[-2]
        if end > self.max_seq_len:
            raise ValueError(f"cache holds {self.max_seq_len} positions, update would make it {end}")
        self.v_cache[:, :, start:end] = v
        self.seq_len = end
        self.k_cache[:, :, self.seq_len:self.seq_len + k.shape[-2]] = k  # past the filled prefix
        return self.k_cache[:, :, :end], self.v_cache[:, :, :end]
