"""The residual window keeps one token fewer than `residual` (> instead of >= when moving tokens out)."""
MODULE = "kv_quant"


class QuantizedKVCache(QuantizedKVCache):
    def update(self, k, v):
        check_cache_update(self, k, v)
        n = self.seq_len + k.shape[-2]
        if n > self.max_seq_len:
            raise ValueError(f"cache holds {self.max_seq_len} positions, update would make it {n}")
        self.k_recent = torch.cat([self.k_recent, k], dim=2)
        self.v_recent = torch.cat([self.v_recent, v], dim=2)
        self.seq_len = n
        G = self.key_group
        while self.k_recent.shape[2] - G >= self.residual - 1 and self.k_recent.shape[2] >= G:
            self.k_groups.append(quantize(self.k_recent[:, :, :G], self.bits, dim=-2, group_size=G))
            self.v_groups.append(quantize(self.v_recent[:, :, :G], self.bits, dim=-1, group_size=self.group_size))
            self.k_recent, self.v_recent = self.k_recent[:, :, G:].clone(), self.v_recent[:, :, G:].clone()
        k_all = torch.cat([dequantize(q) for q in self.k_groups] + [self.k_recent], dim=2)
        v_all = torch.cat([dequantize(q) for q in self.v_groups] + [self.v_recent], dim=2)
        return k_all, v_all
