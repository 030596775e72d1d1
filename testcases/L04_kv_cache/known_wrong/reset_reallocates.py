"""reset() allocates fresh buffers instead of rewinding: every new sequence pays for a new allocation."""
MODULE = "kv_cache"


class KVCache(KVCache):
    def reset(self):
        self.k_cache = torch.zeros_like(self.k_cache)
        self.v_cache = torch.zeros_like(self.v_cache)
        self.seq_len = 0
