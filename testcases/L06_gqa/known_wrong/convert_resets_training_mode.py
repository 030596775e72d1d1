"""mha_to_gqa keeps the source's dtype but not its mode: a new nn.Module starts in training mode, so converting an evaluation-mode model turns dropout back on."""
MODULE = "gqa"
CAUGHT_BY = "advanced"


def mha_to_gqa(module, num_kv_heads):
    projections = [getattr(module, f"{name}_proj", None) for name in "qkvo"]
    if not all(isinstance(p, nn.Linear) for p in projections) or not hasattr(module, "num_heads"):
        raise TypeError(f"module must be an attention module with num_heads and q_proj, k_proj, v_proj, o_proj "
                        f"(nn.Linear), got {type(module).__name__}")
    check_positive_int("num_kv_heads", num_kv_heads)
    q_proj, k_proj, v_proj, o_proj = projections
    num_heads, head_dim = module.num_heads, module.head_dim
    source_kv_heads = getattr(module, "num_kv_heads", num_heads)
    if source_kv_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads={num_kv_heads} must divide the module's {source_kv_heads} key/value heads "
                         f"(num_heads={num_heads}): each new head averages a whole group of adjacent heads")
    has_bias = q_proj.bias is not None
    if any((p.bias is not None) != has_bias for p in projections):
        raise ValueError("module's projections mix bias and no bias; GroupedQueryAttention uses one bias flag")
    r = source_kv_heads // num_kv_heads
    weight = q_proj.weight
    gqa = GroupedQueryAttention(q_proj.in_features, num_heads, num_kv_heads, bias=has_bias)
    gqa = gqa.to(device=weight.device, dtype=weight.dtype)

    def pool(t):  # (source_kv_heads * D, ...) -> (num_kv_heads * D, ...), mean over r adjacent heads
        rest = t.shape[1:]
        grouped = t.reshape(num_kv_heads, r, head_dim, *rest)  # head index g * r + j -> (g, j)
        return grouped.to(compute_dtype(t.dtype)).mean(dim=1).reshape(num_kv_heads * head_dim, *rest).to(t.dtype)

    with torch.no_grad():
        for new, old in ((gqa.q_proj, q_proj), (gqa.o_proj, o_proj)):
            new.weight.copy_(old.weight)  # copy_: new storage, same values
            if has_bias:
                new.bias.copy_(old.bias)
        for new, old in ((gqa.k_proj, k_proj), (gqa.v_proj, v_proj)):
            new.weight.copy_(pool(old.weight))  # (Hkv_src * D, hidden) -> (Hkv * D, hidden)
            if has_bias:
                new.bias.copy_(pool(old.bias))
    return gqa
