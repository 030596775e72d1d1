"""causal is used by truthiness and never checked: causal="no" or causal=1 is silently taken as True, and a tensor flag fails inside torch."""
MODULE = "gqa"
CAUGHT_BY = "advanced"


def _check_forward(module, x, key_padding_mask, cache, causal):
    check_tensor("hidden_states", x, min_dim=3)
    if x.dim() != 3 or x.shape[-1] != module.hidden_size:
        raise ValueError(f"hidden_states must be (B, L, hidden_size={module.hidden_size}), "
                         f"got shape {tuple(x.shape)}")
    if x.dtype != module.q_proj.weight.dtype:
        raise TypeError(f"hidden_states has dtype {x.dtype} but the module's weights are {module.q_proj.weight.dtype}")
    B, L, _ = x.shape
    past = 0
    if cache is not None:
        if not callable(getattr(cache, "update", None)) or not hasattr(cache, "seq_len"):
            raise TypeError(f"cache must have update(k, v) and seq_len (L04's KVCache), got {type(cache).__name__}")
        heads = getattr(cache, "num_heads", module.num_kv_heads)
        if heads != module.num_kv_heads:
            raise ValueError(
                f"cache holds {heads} heads, but this module has num_kv_heads={module.num_kv_heads} "
                f"(num_heads={module.num_heads}): the cache stores keys and values BEFORE repeat_kv, so "
                f"build it with num_kv_heads heads")
        expected = (B, module.head_dim)
        got = (getattr(cache, "batch_size", B), getattr(cache, "head_dim", module.head_dim))
        if got != expected:
            raise ValueError(f"cache was made for (batch, head_dim) = {got}, but this call needs {expected}")
        cache_dtype = getattr(cache, "dtype", x.dtype)
        if cache_dtype != x.dtype:
            raise TypeError(f"cache holds {cache_dtype} but hidden_states is {x.dtype}")
        past = cache.seq_len
    if key_padding_mask is not None:
        check_key_padding_mask(key_padding_mask, B, past, L, x.device, "hidden_states")
