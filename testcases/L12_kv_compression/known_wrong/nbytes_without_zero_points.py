"""The cache's nbytes counts codes and scales but not the zero points (as if quantization were symmetric)."""
MODULE = "kv_quant"


class QuantizedKVCache(QuantizedKVCache):
    @property
    def nbytes(self):
        quantized = sum(q.codes.nbytes + q.scale.nbytes for q in self.k_groups + self.v_groups)
        return quantized + self.k_recent.nbytes + self.v_recent.nbytes
