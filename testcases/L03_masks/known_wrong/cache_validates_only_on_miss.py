"""MaskCache checks q_len/k_len only when building a mask: causal(3.0) after causal(3) is a hit (3.0 == 3 as a key)."""
MODULE = "masks"
CAUGHT_BY = "advanced"


class MaskCache(MaskCache):
    def causal(self, q_len, k_len=None, device=None):
        k_len = q_len if k_len is None else k_len
        key = (q_len, k_len, torch.device(device or "cpu"))
        if key in self._masks:
            self.hits += 1
            self._masks.move_to_end(key)
            return self._masks[key]
        self.misses += 1
        self._masks[key] = mask = causal_mask(q_len, k_len, device=device)
        if len(self._masks) > self.max_entries:
            self._masks.popitem(last=False)
        return mask
