"""Independent references, built from torch primitives and evaluated in float64.

Tests compare implementations against these, never against solutions/.
Each follows the course conventions (COURSE.md): boolean masks are True = may
attend, additive masks are 0 / -inf, and a fully masked row gives zeros.
"""
import math

import torch


def softmax_ref(x, dim=-1):
    """torch.softmax in float64; a row that is entirely -inf gives zeros, not NaN."""
    x = x.detach().to(torch.float64)
    empty_row = torch.isneginf(x).all(dim=dim, keepdim=True)
    return torch.softmax(x, dim=dim).masked_fill(empty_row, 0.0)


def logsumexp_ref(x, dim=-1):
    """torch.logsumexp in float64 (-inf for a row that is entirely -inf)."""
    return torch.logsumexp(x.detach().to(torch.float64), dim=dim)


def additive_mask(mask):
    """Boolean (True = keep) -> float64 0 / -inf; an additive mask passes through."""
    if mask.dtype == torch.bool:
        zeros = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
        return zeros.masked_fill(~mask, -math.inf)
    return mask.detach().to(torch.float64)


def attention_ref(q, k, v, mask=None, scale=None):
    """softmax(q k^T * scale + mask) v in float64, with einsum.

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) -> out (..., Lq, Dv),
    weights (..., Lq, Lk).
    """
    q, k, v = (t.detach().to(torch.float64) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("...qd,...kd->...qk", q, k) * scale
    if mask is not None:
        scores = scores + additive_mask(mask).to(scores.device)
    weights = softmax_ref(scores, dim=-1)
    return torch.einsum("...qk,...kd->...qd", weights, v), weights


def causal_mask_ref(q_len, k_len=None, device="cpu"):
    """Bottom-right causal mask (True = may attend): query i sits at absolute
    position i + k_len - q_len and sees keys j <= that position."""
    k_len = q_len if k_len is None else k_len
    ones = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    return ones.tril(diagonal=k_len - q_len)


def padding_mask_ref(lengths, max_len=None, device="cpu"):
    """(batch, max_len) bool, True for the first lengths[b] positions of row b."""
    lengths = torch.as_tensor(lengths, device=device)
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=device)[None, :] < lengths[:, None]


def mha_ref(x, w_q, w_k, w_v, w_o, num_heads, mask=None, b_q=None, b_k=None, b_v=None, b_o=None):
    """Multi-head self-attention in float64: x (B, L, d_model) -> (B, L, d_model).

    w_*: (d_model, d_model) in nn.Linear's (out, in) layout, b_*: (d_model,) or
    None. Head h uses output features [h * D, (h + 1) * D) of each projection,
    D = d_model // num_heads. mask: None, or bool / additive broadcasting to
    (B, H, L, L), as for attention_ref (fully masked rows give 0 before w_o).
    """
    x = x.detach().to(torch.float64)
    batch, length, d_model = x.shape
    head_dim = d_model // num_heads

    def project(w, b):  # (B, L, d_model) -> (B, H, L, D)
        y = x @ w.detach().to(torch.float64).T
        if b is not None:
            y = y + b.detach().to(torch.float64)
        return y.reshape(batch, length, num_heads, head_dim).transpose(1, 2)

    q, k, v = project(w_q, b_q), project(w_k, b_k), project(w_v, b_v)
    out, _ = attention_ref(q, k, v, mask=mask)  # (B, H, L, D)
    out = out.transpose(1, 2).reshape(batch, length, d_model) @ w_o.detach().to(torch.float64).T
    return out if b_o is None else out + b_o.detach().to(torch.float64)


def mha_module_ref(module, x, causal=True, key_padding_mask=None):
    """mha_ref with the weights of a module that has q_proj, k_proj, v_proj,
    o_proj (nn.Linear) and num_heads: the full-sequence answer that any
    cached or chunked evaluation of `module` must reproduce. key_padding_mask:
    (B, L) bool, True = real token."""
    length = x.shape[1]
    mask = causal_mask_ref(length, device=x.device) if causal else None  # (L, L)
    if key_padding_mask is not None:
        keys = key_padding_mask[:, None, None, :]  # (B, 1, 1, L)
        mask = keys if mask is None else mask & keys
    weights = [getattr(module, f"{name}_proj").weight for name in "qkvo"]
    biases = {f"b_{name}": getattr(module, f"{name}_proj").bias for name in "qkvo"}
    return mha_ref(x, *weights, module.num_heads, mask=mask, **biases)


def tiny_decoder_ref(model, ids, key_padding_mask=None):
    """Logits (B, L, vocab) in float64 of L04's TinyDecoder, read from its
    weights and recomputed with torch primitives, over the WHOLE sequence ids
    (B, L) at once (no cache). Assumes its structure: tok_emb, pos_emb
    (nn.Embedding), blocks[i] with ln_1, attn (q/k/v/o_proj, num_heads), ln_2,
    mlp = Linear-GELU-Linear; ln_f, lm_head. Positions are 0..L-1, or, with
    key_padding_mask (B, L) (True = real token), the number of real tokens
    before each one (left padding shifts nothing)."""
    import torch.nn.functional as F

    def f64(t):
        return None if t is None else t.detach().to(torch.float64)

    def layer_norm(ln, h):
        return F.layer_norm(h, ln.normalized_shape, f64(ln.weight), f64(ln.bias), ln.eps)

    length = ids.shape[1]
    if key_padding_mask is None:
        positions = torch.arange(length, device=ids.device)[None, :]
    else:
        positions = (key_padding_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
    h = f64(model.tok_emb.weight)[ids] + f64(model.pos_emb.weight)[positions]  # (B, L, d_model)
    for block in model.blocks:
        h = h + mha_module_ref(block.attn, layer_norm(block.ln_1, h), causal=True,
                               key_padding_mask=key_padding_mask)
        up, down = block.mlp[0], block.mlp[2]
        hidden = F.gelu(F.linear(layer_norm(block.ln_2, h), f64(up.weight), f64(up.bias)))
        h = h + F.linear(hidden, f64(down.weight), f64(down.bias))
    return F.linear(layer_norm(model.ln_f, h), f64(model.lm_head.weight), f64(model.lm_head.bias))
