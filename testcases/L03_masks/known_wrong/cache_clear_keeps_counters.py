"""MaskCache.clear drops the masks but leaves hits and misses counting from before."""
MODULE = "masks"


class MaskCache(MaskCache):
    def clear(self):
        self._masks.clear()
