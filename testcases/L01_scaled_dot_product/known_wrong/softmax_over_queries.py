"""Softmax over dim=-2 (the queries) instead of dim=-1 (the keys)."""
MODULE = "scaled_dot_product"


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    scores = attention_scores(q, k, scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-2)
    out = (weights @ v.to(weights.dtype)).to(q.dtype)
    return (out, weights.to(q.dtype)) if return_weights else out
