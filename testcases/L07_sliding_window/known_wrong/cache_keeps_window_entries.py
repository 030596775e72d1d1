"""Holds W past entries instead of W - 1, so update returns W + n entries (the oldest one no query can see)."""
MODULE = "sliding_window"


class RollingKVCache(RollingKVCache):
    def __init__(self, batch_size, num_heads, window, head_dim, dtype=torch.float32, device=None):
        super().__init__(batch_size, num_heads, window, head_dim, dtype, device)
        shape = (batch_size, num_heads, window, head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def held(self):
        return min(self.seq_len, self.window)

    def update(self, k, v):
        check_cache_update(self, k, v)
        n, held, ring = k.shape[-2], self.held, self.window
        slots = torch.arange(self.seq_len - held, self.seq_len) % ring
        k_visible = torch.cat([self.k_cache.index_select(2, slots), k], dim=2)
        v_visible = torch.cat([self.v_cache.index_select(2, slots), v], dim=2)
        kept = min(n, ring)
        new = torch.arange(self.seq_len + n - kept, self.seq_len + n) % ring
        self.k_cache[:, :, new] = k[:, :, n - kept:]
        self.v_cache[:, :, new] = v[:, :, n - kept:]
        self.seq_len += n
        return k_visible, v_visible
