"""One sparse mask, from layer 0's retention, applied to every layer."""
MODULE = "kv_eviction"


def sparse_attention_masks(retentions, threshold=0.01):
    return [retentions[0] >= threshold for _ in retentions]
