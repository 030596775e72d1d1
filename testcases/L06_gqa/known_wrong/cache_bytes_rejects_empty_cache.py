"""kv_cache_bytes requires seq_len >= 1: an empty cache (seq_len=0), which holds 0 bytes, is an error."""
MODULE = "gqa"
CAUGHT_BY = "advanced"


def kv_cache_bytes(batch_size, seq_len, num_layers, num_kv_heads, head_dim, dtype):
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("num_layers", num_layers),
                        ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
        check_positive_int(name, value)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    element_size = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * batch_size * num_kv_heads * seq_len * head_dim * element_size
