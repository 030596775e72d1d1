"""mha_to_gqa writes the pooled weights into the SOURCE's k_proj/v_proj rows (in place), corrupting the MHA it was given."""
MODULE = "gqa"
CAUGHT_BY = "advanced"

_reference_mha_to_gqa = mha_to_gqa


def mha_to_gqa(module, num_kv_heads):
    gqa = _reference_mha_to_gqa(module, num_kv_heads)
    n = gqa.k_proj.weight.shape[0]
    with torch.no_grad():
        module.k_proj.weight[:n] = gqa.k_proj.weight
        module.v_proj.weight[:n] = gqa.v_proj.weight
    return gqa
