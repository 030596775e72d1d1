"""mha_to_gqa keeps the first head of each group instead of the mean of the group."""
MODULE = "gqa"

_reference_mha_to_gqa = mha_to_gqa


def mha_to_gqa(module, num_kv_heads):
    gqa = _reference_mha_to_gqa(module, num_kv_heads)
    r = getattr(module, "num_kv_heads", module.num_heads) // num_kv_heads
    D = module.head_dim
    with torch.no_grad():
        for new, old in ((gqa.k_proj, module.k_proj), (gqa.v_proj, module.v_proj)):
            w = old.weight.reshape(num_kv_heads, r, D, -1)
            new.weight.copy_(w[:, 0].reshape(num_kv_heads * D, -1))
    return gqa
