"""mha_to_gqa hands the source's q_proj and o_proj modules to the result: training one changes the other."""
MODULE = "gqa"
CAUGHT_BY = "advanced"

_reference_mha_to_gqa = mha_to_gqa


def mha_to_gqa(module, num_kv_heads):
    gqa = _reference_mha_to_gqa(module, num_kv_heads)
    gqa.q_proj, gqa.o_proj = module.q_proj, module.o_proj
    return gqa
