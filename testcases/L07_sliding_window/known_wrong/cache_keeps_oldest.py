"""Once the ring is full, update stops writing: the cache keeps the OLDEST window - 1 entries instead of the newest."""
MODULE = "sliding_window"


class RollingKVCache(RollingKVCache):
    def update(self, k, v):
        check_cache_update(self, k, v)
        n, held = k.shape[-2], self.held
        k_visible = torch.cat([self.k_cache[:, :, :held], k], dim=2)
        v_visible = torch.cat([self.v_cache[:, :, :held], v], dim=2)
        room = min(self.window - 1 - held, n)  # fill the free slots, then never write again
        if room > 0:
            self.k_cache[:, :, held:held + room] = k[:, :, :room]
            self.v_cache[:, :, held:held + room] = v[:, :, :room]
        self.seq_len += n
        return k_visible, v_visible
