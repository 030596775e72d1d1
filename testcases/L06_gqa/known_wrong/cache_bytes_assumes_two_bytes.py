"""kv_cache_bytes hard-codes 2 bytes per element (bf16) and ignores dtype."""
MODULE = "gqa"


def kv_cache_bytes(batch_size, seq_len, num_layers, num_kv_heads, head_dim, dtype):
    return 2 * num_layers * batch_size * num_kv_heads * seq_len * head_dim * 2
