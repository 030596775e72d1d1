"""Sink keys re-rotated to their cache slot although they were cached already rotated: their angle is counted twice."""
MODULE = "kv_eviction"

_update = SinkKVCache.update


def _update_twice(self, k, v):
    k_all, v_all = _update(self, k, v)
    s = min(self.num_sink, k_all.shape[2])
    if s and self.seq_len > self.num_sink + self.recent - 1:
        slots = torch.arange(s)
        k_all = torch.cat([apply_rope(k_all[:, :, :s], *rope_cos_sin(slots, self.head_dim)), k_all[:, :, s:]], dim=2)
    return k_all, v_all


SinkKVCache.update = _update_twice
