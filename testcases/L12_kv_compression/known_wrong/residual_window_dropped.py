"""No full-precision window: every token is quantized as soon as it arrives (residual ignored)."""
MODULE = "kv_quant"


class QuantizedKVCache(QuantizedKVCache):
    def update(self, k, v):
        check_cache_update(self, k, v)
        n = self.seq_len + k.shape[-2]
        if n > self.max_seq_len:
            raise ValueError(f"cache holds {self.max_seq_len} positions, update would make it {n}")
        self.k_groups.append(quantize(k, self.bits, dim=-2, group_size=self.key_group))
        self.v_groups.append(quantize(v, self.bits, dim=-1, group_size=self.group_size))
        self.seq_len = n
        return (torch.cat([dequantize(q) for q in self.k_groups], dim=2),
                torch.cat([dequantize(q) for q in self.v_groups], dim=2))
