"""Multiplies the logits by the temperature instead of dividing: a low temperature flattens the distribution."""
MODULE = "decoder"


@torch.no_grad()
def generate(model, input_ids, max_new_tokens, attention_mask=None, use_cache=True,
             temperature=0.0, top_k=None, generator=None):
    B, L = input_ids.shape
    ids, mask = input_ids, None if attention_mask is None else attention_mask.to(torch.bool)
    caches = model.new_caches(B, L + max_new_tokens) if use_cache and max_new_tokens else None
    new = ids
    for _ in range(max_new_tokens):
        logits = model(new if use_cache else ids, attention_mask=mask, caches=caches)[:, -1]
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits.float() * temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, -math.inf)
            next_id = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        ids = torch.cat([ids, next_id], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        new = next_id
    return ids
