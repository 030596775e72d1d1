"""MaskCache evicts the oldest insertion (FIFO) instead of the least recently used: a hit does not refresh the entry."""
MODULE = "masks"


class MaskCache(MaskCache):
    def causal(self, q_len, k_len=None, device=None):
        k_len = q_len if k_len is None else k_len
        key = (q_len, k_len, torch.device(device or "cpu"))
        if key in self._masks:
            self.hits += 1
            return self._masks[key]  # no move_to_end
        self.misses += 1
        self._masks[key] = mask = causal_mask(q_len, k_len, device=device)
        if len(self._masks) > self.max_entries:
            self._masks.popitem(last=False)
        return mask
