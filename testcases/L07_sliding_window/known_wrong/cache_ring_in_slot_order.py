"""Returns the ring buffer in slot order (0, 1, ...) instead of oldest first: once it wraps, positions are shuffled."""
MODULE = "sliding_window"


class RollingKVCache(RollingKVCache):
    def update(self, k, v):
        held = self.held
        k_past, v_past = self.k_cache[:, :, :held].clone(), self.v_cache[:, :, :held].clone()
        super().update(k, v)
        return torch.cat([k_past, k], dim=2), torch.cat([v_past, v], dim=2)
