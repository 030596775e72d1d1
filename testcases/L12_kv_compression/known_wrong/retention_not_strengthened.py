"""Attention resets the clock but never adds strength: every token fades at S_0 forever."""
MODULE = "kv_eviction"


def _reinforce(self, weights, t):
    attended = self.valid & (weights >= self.curve.refresh)
    self.last_seen = torch.where(attended, torch.full_like(self.last_seen, t), self.last_seen)


RetentionKVCache.reinforce = _reinforce
