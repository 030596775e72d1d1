"""kv_cache_bytes counts the keys only: the factor 2 for K and V is missing."""
MODULE = "gqa"


def kv_cache_bytes(batch_size, seq_len, num_layers, num_kv_heads, head_dim, dtype):
    return num_layers * batch_size * num_kv_heads * seq_len * head_dim * torch.empty((), dtype=dtype).element_size()
