"""reset() zeroes the buffers but keeps seq_len: the next sequence sees zero keys where its past should be empty."""
MODULE = "sliding_window"
CAUGHT_BY = "advanced"


class RollingKVCache(RollingKVCache):
    def reset(self):
        self.k_cache.zero_()
        self.v_cache.zero_()
