"""mha_to_gqa averages heads g, g + Hkv, g + 2 Hkv, ... (the tiled .repeat grouping), not the adjacent heads g*r .. g*r + r - 1."""
MODULE = "gqa"

_reference_mha_to_gqa = mha_to_gqa


def mha_to_gqa(module, num_kv_heads):
    gqa = _reference_mha_to_gqa(module, num_kv_heads)
    D = module.head_dim
    with torch.no_grad():
        for new, old in ((gqa.k_proj, module.k_proj), (gqa.v_proj, module.v_proj)):
            w = old.weight.reshape(-1, num_kv_heads, D, old.weight.shape[1])  # (r, Hkv, D, hidden): strided groups
            new.weight.copy_(w.mean(dim=0).reshape(num_kv_heads * D, -1))
    return gqa
