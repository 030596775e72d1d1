"""update finds the ring's oldest slot as seq_len % (window - 1): with window = 1 (a token sees only itself) the ring has no slot and the modulo by 0 raises ZeroDivisionError."""
MODULE = "sliding_window"


def update(self, k, v):
    check_cache_update(self, k, v)
    n, ring = k.shape[-2], self.window - 1
    oldest = self.seq_len % ring  # once the ring is full, the oldest entry sits in this slot
    if self.seq_len >= ring:  # full: unroll the ring starting at its oldest slot
        past_k = torch.cat([self.k_cache[:, :, oldest:], self.k_cache[:, :, :oldest]], dim=2)
        past_v = torch.cat([self.v_cache[:, :, oldest:], self.v_cache[:, :, :oldest]], dim=2)
    else:  # not full yet: slots 0 .. seq_len - 1, already in time order
        past_k, past_v = self.k_cache[:, :, :self.seq_len], self.v_cache[:, :, :self.seq_len]
    k_visible, v_visible = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
    kept = min(n, ring)
    for i, t in enumerate(range(self.seq_len + n - kept, self.seq_len + n)):
        self.k_cache[:, :, t % ring] = k[:, :, n - kept + i]
        self.v_cache[:, :, t % ring] = v[:, :, n - kept + i]
    self.seq_len += n
    return k_visible, v_visible


RollingKVCache.update = update
