"""No causal mask among the Lq new queries: every one sees all of its row's keys, the later queries' too."""
MODULE = "decode_attention"


def split_kv_attention(q, k, v, num_splits, kv_lens=None, scale=None):
    """Attention of a few queries over a long cache, computed split by split.

    q (B, H, Lq, D), k (B, Hkv, T, D), v (B, Hkv, T, Dv) -> (out (B, H, Lq, Dv), lse (B, H, Lq)).

    The T keys are cut into num_splits chunks by split_bounds(T, num_splits)
    (ceil(T / num_splits) keys each, the last one shorter, trailing ones
    possibly empty). Each chunk is attended on its own, giving a partial
    (out_s, lse_s) with the usual softmax over ITS keys only; the partials are
    then combined with merge_partials. The result equals ordinary attention
    softmax(q k^T * scale + mask) v with

        key j visible from query i of row b   iff   j < kv_lens[b]  and  j <= kv_lens[b] - Lq + i

    GQA: the G = H // Hkv query heads of a KV group share its keys: query head
    h reads k[:, h // G] (do not copy K, V G times; reshape q to
    (B, Hkv, G, Lq, D) instead). A chunk with no visible key (empty, or past
    kv_lens[b]) has lse -inf and contributes nothing; a query that sees no key
    at all gets out 0, lse -inf. Scale defaults to 1/sqrt(D). Half inputs are
    computed in float32; out in q's dtype, lse float32 (float64 for float64).

    Errors (TypeError/ValueError naming the argument): q, k, v not 4-D float
    tensors of one dtype and device, batch/head_dim/length mismatches, H not a
    multiple of Hkv; num_splits not an int >= 1; kv_lens not an integer (B,)
    tensor with values in 0..T; scale not a finite float.
    """
    _check_inputs(q, k, v, num_splits, kv_lens, scale)
    B, H, Lq, D = q.shape
    Hkv, T, Dv = k.shape[1], k.shape[2], v.shape[-1]
    G = H // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    work = compute_dtype(q.dtype)  # float32 for half inputs: scores, softmax and statistics
    lens = torch.full((B,), T, device=q.device) if kv_lens is None else kv_lens.to(q.device, torch.int64)
    # GQA packing: the G query heads of KV head g are rows of one (G * Lq, D) block (heads g*G .. g*G+G-1)
    qg = q.to(work).reshape(B, Hkv, G * Lq, D)              # (B, H, Lq, D) -> (B, Hkv, G*Lq, D)
    pos = (lens[:, None] - Lq + torch.arange(Lq, device=q.device)).repeat(1, G)  # (B, G*Lq): row -> position

    out = torch.zeros(B, Hkv, G * Lq, Dv, dtype=work, device=q.device)
    lse = torch.full((B, Hkv, G * Lq), -math.inf, dtype=torch.float32 if work != torch.float64 else work,
                     device=q.device)
    for start, end in split_bounds(T, num_splits):
        if start == end:
            continue  # an empty chunk: lse -inf, merging it changes nothing
        k_s, v_s = k[:, :, start:end].to(work), v[:, :, start:end].to(work)  # (B, Hkv, n, D), (B, Hkv, n, Dv)
        scores = qg @ k_s.transpose(-2, -1) * scale          # (B, Hkv, G*Lq, D) @ (B, Hkv, D, n) -> (B, Hkv, G*Lq, n)
        j = torch.arange(start, end, device=q.device)        # (n,) absolute key positions
        visible = (j[None, None, :] < lens[:, None, None]).expand(-1, G * Lq, -1)  # BUG: no causal mask
        scores = scores.masked_fill(~visible[:, None], -math.inf)
        # -- partial softmax over this chunk; a row that sees nothing here gets out 0, lse -inf --
        m = scores.amax(dim=-1)                               # (B, Hkv, G*Lq)
        m_safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
        p = torch.exp(scores - m_safe[..., None])             # (B, Hkv, G*Lq, n); exp(-inf) = 0 for hidden keys
        l = p.sum(dim=-1)                                     # (B, Hkv, G*Lq)
        out_s = (p @ v_s) / torch.where(l > 0, l, 1.0)[..., None]  # (B, Hkv, G*Lq, n) @ (B, Hkv, n, Dv)
        lse_s = torch.where(l > 0, m_safe + torch.log(torch.where(l > 0, l, 1.0)), -math.inf)
        # -- fold the chunk into the running result: the online softmax, one chunk at a time --
        out, lse = merge_partials(out, lse, out_s, lse_s.to(lse.dtype))
    return out.reshape(B, H, Lq, Dv).to(q.dtype), lse.reshape(B, H, Lq)
