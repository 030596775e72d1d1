"""Plain softmax, then torch.nan_to_num: the forward is right, but with an additive mask the backward through a fully masked row is NaN."""
MODULE = "scaled_dot_product"
CAUGHT_BY = "advanced"


def scaled_dot_product_attention(q, k, v, mask=None, scale=None, dropout_p=0.0, training=False,
                                 return_weights=False):
    check_qkv(q, k, v)
    check_probability("dropout_p", dropout_p)
    scores = attention_scores(q, k, scale)
    if mask is not None:
        check_mask(mask, scores.shape, scores.device)
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask.to(scores.dtype)
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)  # 0/0 rows cleaned after the fact
    if training and dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = (weights @ v.to(weights.dtype)).to(q.dtype)
    return (out, weights.to(q.dtype)) if return_weights else out
