"""GQA with .repeat instead of repeat_interleave: query head h reads KV head h % Hkv instead of h // (H // Hkv)."""
MODULE = "paged_kv_cache"


def paged_attention(q, k_pages, v_pages, block_tables, seq_lens, scale=None):
    """One query per sequence against its paged keys and values (decoding).

    q (S, H, D); k_pages, v_pages (num_blocks, Hkv, block_size, D) — one
    layer's pages, e.g. cache.k_pages[layer]; block_tables int (S, max_blocks)
    (-1 padded); seq_lens int (S,). Sequence s attends to its first
    seq_lens[s] tokens: token t lives in block block_tables[s, t // block_size]
    at offset t % block_size. Query head h reads KV head h // (H // Hkv).
    Returns (S, H, D) in q's dtype; a sequence of length 0 gives zeros.
    """
    _check_paged(q, k_pages, v_pages, block_tables, seq_lens)
    S, H, D = q.shape
    num_blocks, Hkv, bs, _ = k_pages.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    work = compute_dtype(q.dtype)
    lens = seq_lens.to(device=q.device, dtype=torch.long)
    width = block_tables.shape[1]
    # -- gather every sequence's blocks: (S, max_blocks, Hkv, bs, D) -> (S, Hkv, max_blocks * bs, D) --
    tables = block_tables.to(device=q.device, dtype=torch.long).clamp(min=0)  # -1 padding -> any block, masked below
    k = k_pages[tables].permute(0, 2, 1, 3, 4).reshape(S, Hkv, width * bs, D).to(work)
    v = v_pages[tables].permute(0, 2, 1, 3, 4).reshape(S, Hkv, width * bs, D).to(work)
    # -- GQA: query head h reads KV head h // (H // Hkv) --
    k, v = k.repeat(1, H // Hkv, 1, 1), v.repeat(1, H // Hkv, 1, 1)   # (S, H, T, D)
    scores = torch.einsum("shd,shtd->sht", q.to(work), k) * scale                        # (S, H, T)
    valid = torch.arange(width * bs, device=q.device)[None, :] < lens[:, None]           # (S, T): t < seq_len
    scores = scores.masked_fill(~valid[:, None, :], -math.inf)
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)                             # length 0 -> zeros
    return torch.einsum("sht,shtd->shd", weights, v).to(q.dtype)
    ### END SOLUTION
