"""kv_cache_bytes multiplies by the dtype's size in BITS (dtype.itemsize * 8), not bytes."""
MODULE = "gqa"


def kv_cache_bytes(batch_size, seq_len, num_layers, num_kv_heads, head_dim, dtype):
    return 2 * num_layers * batch_size * num_kv_heads * seq_len * head_dim * dtype.itemsize * 8
