"""The chunked form builds the whole (L, L) matrix and masks it: right numbers, but the point of the form (memory that grows with C, not L) is lost."""
MODULE = "linear_attention"


def linear_attention_chunked(q, k, v, chunk_size=64, feature_map=None, eps=1e-6):
    _check_common(q, k, v, feature_map, eps)
    check_positive_int("chunk_size", chunk_size)
    _check_self_attention(q, k)
    return linear_attention(q, k, v, causal=True, feature_map=feature_map, eps=eps)
