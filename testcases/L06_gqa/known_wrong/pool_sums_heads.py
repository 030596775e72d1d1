"""mha_to_gqa sums each group's key/value projections instead of averaging them (n_rep times too large)."""
MODULE = "gqa"

_reference_mha_to_gqa = mha_to_gqa


def mha_to_gqa(module, num_kv_heads):
    gqa = _reference_mha_to_gqa(module, num_kv_heads)
    r = getattr(module, "num_kv_heads", module.num_heads) // num_kv_heads
    with torch.no_grad():
        for proj in (gqa.k_proj, gqa.v_proj):
            proj.weight.mul_(r)
            if proj.bias is not None:
                proj.bias.mul_(r)
    return gqa
