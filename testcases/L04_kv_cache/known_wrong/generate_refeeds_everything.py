"""With the cache, feeds the whole sequence again at every step instead of the one new token."""
MODULE = "kv_cache"


@torch.no_grad()
def greedy_generate(model, prompt_ids, max_new_tokens, use_cache=True, prompt_mask=None):
    ids, mask = prompt_ids, prompt_mask
    B = ids.shape[0]
    caches = model.new_caches(B, ids.shape[1] + max_new_tokens) if use_cache else None
    for _ in range(max_new_tokens):
        logits = model(ids, key_padding_mask=mask, caches=caches)
        next_id = logits[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
    return ids
