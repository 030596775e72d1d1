"""new_caches allocates num_heads heads per layer, not num_kv_heads: right answers, n_rep times the memory."""
MODULE = "decoder"


def _new_caches(self, batch_size, max_seq_len, dtype=None, device=None):
    weight = self.embed_tokens.weight
    dtype = weight.dtype if dtype is None else dtype
    H, D, W = self.config.num_heads, self.config.head_dim, self.config.sliding_window
    if W is None:
        return [KVCache(batch_size, H, max_seq_len, D, dtype=dtype, device=weight.device) for _ in self.layers]
    return [RollingKVCache(batch_size, H, W, D, dtype=dtype, device=weight.device) for _ in self.layers]


Decoder.new_caches = _new_caches
