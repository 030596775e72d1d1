"""A decode step attends before writing the new token's key and value: the token cannot see itself and reads whatever its slot held."""
MODULE = "serving"


def _decode(self):
    """One token for every running request, batched; preempt when the pool is full."""
    batch = []
    for request in list(self.running):
        if request not in self.running:                                       # preempted for an earlier one
            continue
        while True:
            try:
                slot = self.cache.allocate(request.id, 1)                     # room for the token fed now
                batch.append((request, slot))
                break
            except MemoryError:
                victim = self.running[-1]                                     # the request admitted last
                self._preempt(victim)
                batch = [(r, s) for r, s in batch if r is not victim]
                if victim is request:
                    break
    if not batch:
        return
    requests = [r for r, _ in batch]
    slots = torch.cat([s for _, s in batch])                                  # (S,)
    ids = [r.id for r in requests]
    tables, lens = self.cache.block_tables(ids), self.cache.seq_lens(ids)      # lens include the new token
    tokens = torch.tensor([[r.context[-1]] for r in requests], device=self._device)   # (S, 1)
    positions = (lens.to(torch.long) - 1)[:, None].to(self._device)             # (S, 1): its position

    def attend(layer_index, q, k, v):
        # q (S, H, 1, D), k/v (S, Hkv, 1, D): store this token's key/value, then read every cached one
        out = paged_attention(q[:, :, 0], self.cache.k_pages[layer_index], self.cache.v_pages[layer_index],
                              tables, lens)                                   # (S, H, D)
        self.cache.write(layer_index, slots, k[:, :, 0], v[:, :, 0])
        return out[:, :, None]

    logits = self._forward(tokens, positions, attend)                         # (S, 1, vocab)
    for request, token in zip(requests, logits[:, -1].argmax(dim=-1).tolist()):
        request.output.append(token)
        self._after_token(request, new=False)


Engine._decode = _decode
