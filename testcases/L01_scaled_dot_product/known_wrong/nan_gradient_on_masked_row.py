"""Zeroes fully masked rows with torch.where after the softmax: the forward is right, the backward is NaN."""
MODULE = "scaled_dot_product"
CAUGHT_BY = "advanced"


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    scores = attention_scores(q, k, scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask
    empty_row = torch.isneginf(scores).all(dim=-1, keepdim=True)
    weights = torch.where(empty_row, 0.0, torch.softmax(scores, dim=-1))  # NaN * 0 in backward
    out = (weights @ v.to(weights.dtype)).to(q.dtype)
    return (out, weights.to(q.dtype)) if return_weights else out
