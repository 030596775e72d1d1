"""MaskCache keyed by (q_len, k_len) without the device: a mask cached on one device is handed out for another."""
MODULE = "masks"
CAUGHT_BY = "advanced"


class MaskCache(MaskCache):
    def causal(self, q_len, k_len=None, device=None):
        check_positive_int("q_len", q_len)
        k_len = q_len if k_len is None else k_len
        check_positive_int("k_len", k_len)
        key = (q_len, k_len)
        if key in self._masks:
            self.hits += 1
            self._masks.move_to_end(key)
            return self._masks[key]
        self.misses += 1
        self._masks[key] = mask = causal_mask(q_len, k_len, device=device)
        if len(self._masks) > self.max_entries:
            self._masks.popitem(last=False)
        return mask
