"""The attention mask ignores which slots hold a token: free (or evicted) slots are attended with whatever they contain."""
MODULE = "kv_eviction"


def cached_key_masks(caches, retentions, mode, threshold=0.01):
    if mode == "sparse_attention":
        return sparse_attention_masks(retentions, threshold)
    return [torch.ones_like(c.valid) for c in caches]
