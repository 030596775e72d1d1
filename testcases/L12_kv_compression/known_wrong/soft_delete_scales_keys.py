"""Soft deletion by scaling the keys by retention: logits shrink towards 0, so a forgotten token with a negative logit gains weight."""
MODULE = "kv_eviction"


def soft_delete_scores(q, k, retention, scale):
    return (q @ (k * retention[:, None, :, None].to(k.dtype)).transpose(-2, -1)) * scale
