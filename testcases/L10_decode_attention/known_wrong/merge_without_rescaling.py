"""Merge weights exp(lse_x - m) are used as they are, not divided by their sum: the merged out is scaled
by the total mass relative to the larger part, right only when one part holds everything."""
MODULE = "decode_attention"


def merge_partials(out_a, lse_a, out_b, lse_b):
    """Merge two partial attentions over DISJOINT key sets into one.

    out_a, out_b (..., Lq, Dv): each part's softmax-normalised output over its
    own keys; lse_a, lse_b (..., Lq): each part's logsumexp of scores (natural
    log; -inf for a part with no visible key, whose out is ignored, even if it
    holds NaN). Returns (out, lse) of attention over the union:

        m   = max(lse_a, lse_b)               (0 where both are -inf)
        w_x = exp(lse_x - m)                  (0 for an empty part)
        lse = m + log(w_a + w_b)              (-inf when both parts are empty)
        out = (w_a out_a + w_b out_b) / (w_a + w_b)      (0 when both are empty)

    Statistics and the weighted sum are computed in float32 (float64 for
    float64 inputs); out comes back in out_a's dtype, lse in float32 (float64).
    Exactly commutative; associative up to rounding.

    Errors: non-tensors or non-float dtypes (TypeError naming the argument),
    out_a/out_b or lse_a/lse_b of different shapes, or lse not out's shape
    without its last dim (ValueError naming them).
    """
    for name, x in (("out_a", out_a), ("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)):
        check_tensor(name, x, min_dim=0)
    if out_a.dim() < 1 or out_a.shape != out_b.shape:
        raise ValueError(f"out_a {tuple(out_a.shape)} and out_b {tuple(out_b.shape)} must have one shape (..., Lq, Dv)")
    if lse_a.shape != out_a.shape[:-1] or lse_b.shape != out_a.shape[:-1]:
        raise ValueError(f"lse_a {tuple(lse_a.shape)} and lse_b {tuple(lse_b.shape)} must be out's shape without "
                         f"its last dim, {tuple(out_a.shape[:-1])}")
    if len({out_a.device, out_b.device, lse_a.device, lse_b.device}) > 1:
        raise ValueError("out_a, lse_a, out_b, lse_b must be on one device")
    work = torch.float64 if torch.float64 in (out_a.dtype, out_b.dtype, lse_a.dtype, lse_b.dtype) else torch.float32
    la, lb = lse_a.to(work), lse_b.to(work)
    m = torch.maximum(la, lb)                                   # (..., Lq)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # both empty: exp(-inf - 0) = 0, not NaN
    w_a, w_b = torch.exp(la - m), torch.exp(lb - m)             # shares of the mass (up to a common factor)
    total = w_a + w_b
    empty = total == 0
    lse = torch.where(empty, torch.full_like(m, -math.inf), m + torch.log(torch.where(empty, 1.0, total)))
    # an empty part's out may hold anything (NaN included): select, never multiply it by 0
    part_a = torch.where(w_a[..., None] > 0, w_a[..., None] * out_a.to(work), 0.0)
    part_b = torch.where(w_b[..., None] > 0, w_b[..., None] * out_b.to(work), 0.0)
    out = part_a + part_b  # BUG: not normalised by w_a + w_b
    return out.to(out_a.dtype), lse
