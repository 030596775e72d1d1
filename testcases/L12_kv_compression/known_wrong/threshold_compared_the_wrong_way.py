"""The sparse mask keeps the keys BELOW the threshold (the forgotten ones) instead of those at or above it."""
MODULE = "kv_eviction"


def sparse_attention_masks(retentions, threshold=0.01):
    return [r < threshold for r in retentions]
