"""mha_to_gqa averages groups of r adjacent ROWS of the weight (inside a head) instead of whole heads: weight.view(-1, r, hidden).mean(1)."""
MODULE = "gqa"

_reference_mha_to_gqa = mha_to_gqa


def mha_to_gqa(module, num_kv_heads):
    gqa = _reference_mha_to_gqa(module, num_kv_heads)
    r = getattr(module, "num_kv_heads", module.num_heads) // num_kv_heads
    with torch.no_grad():
        for new, old in ((gqa.k_proj, module.k_proj), (gqa.v_proj, module.v_proj)):
            new.weight.copy_(old.weight.reshape(-1, r, old.weight.shape[1]).mean(dim=1))
    return gqa
