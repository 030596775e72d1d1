"""Retention is 1 for every held token: the clock is never read, nothing is ever forgotten."""
MODULE = "kv_eviction"


def _retention(self, t):
    return self.valid.to(torch.float32)


RetentionKVCache.retention = _retention
