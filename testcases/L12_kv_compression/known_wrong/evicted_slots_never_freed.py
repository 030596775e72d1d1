"""Eviction only marks tokens invalid and appends new ones to grown buffers: memory is not bounded."""
MODULE = "kv_eviction"


def _append(self, k, v, t, weights=None):
    check_cache_update(self, k, v)
    B, L = k.shape[0], k.shape[2]
    new_pos = torch.arange(self.next_position, self.next_position + L, device=self.device).expand(B, L)
    self.keys = torch.cat([self.keys, k], dim=2)
    self.values = torch.cat([self.values, v], dim=2)
    self.valid = torch.cat([self.valid, torch.ones(B, L, dtype=torch.bool)], dim=1)
    self.positions = torch.cat([self.positions, new_pos], dim=1)
    self.last_seen = torch.cat([self.last_seen, new_pos], dim=1)
    self.strength = torch.cat([self.strength, torch.full((B, L), float(self.curve.initial_strength))], dim=1)
    self.capacity = self.keys.shape[2]
    self.next_position += L


RetentionKVCache.append = _append
