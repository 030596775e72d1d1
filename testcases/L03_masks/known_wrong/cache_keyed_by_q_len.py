"""MaskCache keyed by q_len only: while decoding (q_len = 1, k_len growing) it returns the mask of the first k_len."""
MODULE = "masks"


class MaskCache(MaskCache):
    def causal(self, q_len, k_len=None, device=None):
        key = q_len
        if key in self._masks:
            self.hits += 1
            self._masks.move_to_end(key)
            return self._masks[key]
        self.misses += 1
        self._masks[key] = mask = causal_mask(q_len, k_len, device=device)
        if len(self._masks) > self.max_entries:
            self._masks.popitem(last=False)
        return mask
