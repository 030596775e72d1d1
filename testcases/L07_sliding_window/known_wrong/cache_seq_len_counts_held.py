"""seq_len reports how many past entries the ring holds (at most window - 1), not how many positions were seen."""
MODULE = "sliding_window"


class RollingKVCache(RollingKVCache):
    @property
    def seq_len(self):
        return min(self._seen, self.window - 1)

    @seq_len.setter
    def seq_len(self, value):
        self._seen = value

    @property
    def held(self):
        return min(self._seen, self.window - 1)

    def update(self, k, v):
        # the reference update, reading and advancing the true count through _seen
        check_cache_update(self, k, v)
        n, held, ring = k.shape[-2], self.held, self.window - 1
        past = torch.arange(self._seen - held, self._seen, device=self.device)
        slots = past % ring if held else past
        k_visible = torch.cat([self.k_cache.index_select(2, slots), k], dim=2)
        v_visible = torch.cat([self.v_cache.index_select(2, slots), v], dim=2)
        kept = min(n, ring)
        if kept:
            new = torch.arange(self._seen + n - kept, self._seen + n, device=self.device)
            self.k_cache[:, :, new % ring] = k[:, :, n - kept:]
            self.v_cache[:, :, new % ring] = v[:, :, n - kept:]
        self._seen += n
        return k_visible, v_visible
