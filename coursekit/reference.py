"""Independent references, built from torch primitives and evaluated in float64.

Tests compare implementations against these, never against solutions/.
Each follows the course conventions (tutorial/CONVENTIONS.md): boolean masks are True = may
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


# --- L07 sliding window ---
def sliding_window_mask_ref(q_len, k_len, window, device="cpu"):
    """(q_len, k_len) bool, True = may attend: query i sits at absolute position
    p = i + k_len - q_len (bottom-right) and sees key j iff 0 <= p - j < window.
    window >= k_len gives causal_mask_ref; rows with p < 0 are all False."""
    position = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)  # (Lq, 1)
    key = torch.arange(k_len, device=device)[None, :]  # (1, Lk)
    return (key <= position) & (key > position - window)


def sliding_window_attention_ref(q, k, v, window, scale=None):
    """attention_ref with sliding_window_mask_ref(Lq, Lk, window): float64,
    the full (Lq, Lk) score matrix masked to the band. Returns out only."""
    mask = sliding_window_mask_ref(q.shape[-2], k.shape[-2], window, device=q.device)
    return attention_ref(q, k, v, mask=mask, scale=scale)[0]


# --- L06 grouped-query attention ---
def gqa_ref(x, w_q, w_k, w_v, w_o, num_heads, num_kv_heads, mask=None, b_q=None, b_k=None, b_v=None, b_o=None):
    """Grouped-query self-attention in float64, one query head at a time:
    x (B, L, hidden) -> (B, L, hidden).

    w_q (H*D, hidden), w_k and w_v (Hkv*D, hidden), w_o (hidden, H*D) in
    nn.Linear's (out, in) layout; b_* matching biases or None. Query head h uses
    rows [h*D, (h+1)*D) of w_q and key/value head g = h // (H // Hkv), rows
    [g*D, (g+1)*D) of w_k and w_v (written out with an explicit loop, no
    repeat_interleave). mask: None, or bool / additive broadcasting to
    (B, H, L, L); fully masked rows give 0 before w_o.
    """
    x = x.detach().to(torch.float64)

    def f64(t):
        return None if t is None else t.detach().to(torch.float64)

    def rows(w, b, head, head_dim):  # head's slice of a projection: (B, L, D)
        y = x @ f64(w)[head * head_dim:(head + 1) * head_dim].T
        return y if b is None else y + f64(b)[head * head_dim:(head + 1) * head_dim]

    head_dim = w_q.shape[0] // num_heads
    group = num_heads // num_kv_heads
    if mask is not None:
        mask = mask.to(x.device)
        while mask.dim() < 4:
            mask = mask[None]  # -> (B or 1, H or 1, L, L)
    heads = []
    for h in range(num_heads):
        g = h // group  # the key/value head of query head h
        q, k, v = rows(w_q, b_q, h, head_dim), rows(w_k, b_k, g, head_dim), rows(w_v, b_v, g, head_dim)
        head_mask = None if mask is None else mask[:, min(h, mask.shape[1] - 1)]  # (B or 1, L, L)
        heads.append(attention_ref(q, k, v, mask=head_mask)[0])  # (B, L, D)
    out = torch.cat(heads, dim=-1) @ f64(w_o).T  # (B, L, H*D) -> (B, L, hidden)
    return out if b_o is None else out + f64(b_o)


def gqa_module_ref(module, x, causal=True, key_padding_mask=None):
    """gqa_ref with the weights of a module that has q_proj, k_proj, v_proj,
    o_proj (nn.Linear), num_heads and num_kv_heads (default num_heads): the
    full-sequence answer that any cached or chunked evaluation of `module` must
    reproduce. key_padding_mask: (B, L) bool, True = real token."""
    length = x.shape[1]
    mask = causal_mask_ref(length, device=x.device) if causal else None  # (L, L)
    if key_padding_mask is not None:
        keys = key_padding_mask[:, None, None, :]  # (B, 1, 1, L)
        mask = keys if mask is None else mask & keys
    weights = [getattr(module, f"{name}_proj").weight for name in "qkvo"]
    biases = {f"b_{name}": getattr(module, f"{name}_proj").bias for name in "qkvo"}
    num_kv_heads = getattr(module, "num_kv_heads", module.num_heads)
    return gqa_ref(x, *weights, module.num_heads, num_kv_heads, mask=mask, **biases)


# --- L05 flash attention ---

def attention_lse_ref(q, k, v, causal=False, scale=None, window=None):
    """softmax(q k^T * scale [+ bottom-right causal mask]) v and its logsumexp,
    in float64, DIFFERENTIABLE (inputs are cast with .to, not detached, so
    torch.autograd.grad through it gives reference gradients).

    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv) -> out (..., Lq, Dv),
    lse (..., Lq) = logsumexp of each row's visible scores (natural log). A row
    that sees no key (causal with Lq > Lk) gives out 0, lse -inf and zero
    gradients (its softmax input is replaced by zeros, then multiplied by 0,
    so no NaN enters the graph). `window` W additionally keeps only keys with
    0 <= p - j < W (p the query's bottom-right position).
    """
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("...qd,...kd->...qk", q, k) * scale  # (..., Lq, Lk)
    if causal:
        visible = causal_mask_ref(q.shape[-2], k.shape[-2], device=scores.device)  # (Lq, Lk)
        scores = scores.masked_fill(~visible, -math.inf)
    if window is not None:  # the sliding window of L07 (always used with causal)
        visible = sliding_window_mask_ref(q.shape[-2], k.shape[-2], window, device=scores.device)
        scores = scores.masked_fill(~visible, -math.inf)
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (..., Lq, 1)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1) * ~empty
    lse = torch.logsumexp(scores.detach(), dim=-1)  # -inf for an empty row
    return torch.einsum("...qk,...kd->...qd", weights, v), lse


# --- L08 fused ops ---
def layer_norm_ref(x, weight=None, bias=None, eps=1e-5):
    """F.layer_norm over the last dim in float64: (x - mean) / sqrt(var + eps) * weight + bias,
    with the biased variance (divide by n). weight, bias: (n,) or None."""
    import torch.nn.functional as F

    def f64(t):
        return None if t is None else t.detach().to(torch.float64)

    x = f64(x)
    return F.layer_norm(x, (x.shape[-1],), f64(weight), f64(bias), eps)


def module_chain_ref(modules, x, grad_out=None):
    """Run torch modules (e.g. [nn.LayerNorm, nn.Linear], the unfused pair) one
    after the other in float64, on float64 deep copies, and backpropagate
    grad_out (default: ones). Returns (out, grad_x, grads) with grads a list of
    (parameter of the ORIGINAL modules, its float64 gradient), in the order of
    modules' parameters(). The originals are not touched."""
    import copy

    copies = [copy.deepcopy(m).to(torch.float64) for m in modules]
    x = x.detach().to(torch.float64).requires_grad_(True)
    out = x
    for m in copies:
        out = m(out)
    out.backward(torch.ones_like(out) if grad_out is None else grad_out.detach().to(torch.float64))
    grads = [(p, c.grad) for m, mc in zip(modules, copies) for p, c in zip(m.parameters(), mc.parameters())]
    return out.detach(), x.grad, grads


# --- L10 decode attention ---
def decode_visible_ref(kv_lens, q_len, seq_len, device="cpu"):
    """(B, Lq, T) bool: key j is visible from query i of row b iff j < kv_lens[b] and
    j <= kv_lens[b] - Lq + i (the Lq queries are the row's LAST positions, bottom-right)."""
    lens = torch.as_tensor(kv_lens, device=device).to(torch.int64)
    j = torch.arange(seq_len, device=device)
    position = lens[:, None] - q_len + torch.arange(q_len, device=device)  # (B, Lq)
    return (j[None, None, :] < lens[:, None, None]) & (j[None, None, :] <= position[:, :, None])


def decode_attention_ref(q, k, v, kv_lens=None, scale=None):
    """(out, lse) of q (B, H, Lq, D) over a cache k (B, Hkv, T, D), v (B, Hkv, T, Dv), float64.

    out from F.scaled_dot_product_attention (enable_gqa: query head h reads KV head
    h // (H // Hkv)) with the decode_visible_ref mask; lse = torch.logsumexp of the
    visible scores, from einsum over repeat_interleave'd keys. A row that sees no
    key gives out 0 and lse -inf. kv_lens None means every row holds T keys."""
    import torch.nn.functional as F

    q, k, v = (t.detach().to(torch.float64) for t in (q, k, v))
    B, H, Lq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    lens = torch.full((B,), T) if kv_lens is None else torch.as_tensor(kv_lens).cpu()
    visible = decode_visible_ref(lens, Lq, T, device=q.device)[:, None]  # (B, 1, Lq, T)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if q.numel() == 0 or T == 0:
        return q.new_zeros(B, H, Lq, v.shape[-1]), q.new_full((B, H, Lq), -math.inf)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale, enable_gqa=H != Hkv)
    k_rep = k.repeat_interleave(H // Hkv, dim=1)  # (B, H, T, D)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k_rep) * scale
    lse = torch.logsumexp(scores.masked_fill(~visible, -math.inf), dim=-1)  # (B, H, Lq); -inf for an empty row
    out = out.masked_fill(torch.isneginf(lse)[..., None], 0.0)  # an empty row: 0, whatever SDPA gives there
    return out, lse
def linear_attention_ref(q, k, v, causal=True, feature_map=None, eps=1e-6, decay=None):
    """Linear attention by its definition, in float64: the (Lq, Lk) matrix of
    phi(q_i)·phi(k_j), zeroed where key j is hidden (bottom-right causal), times
    decay^(p_i - j) when a decay is given (a float or a (H,) tensor), then
    out = W v / (W 1 + eps). phi defaults to elu(x) + 1, written piecewise."""
    q, k, v = (t.detach().to(torch.float64) for t in (q, k, v))
    if feature_map is None:
        def feature_map(x):
            return torch.where(x > 0, x + 1.0, torch.exp(x))
    fq, fk = feature_map(q), feature_map(k)
    weights = torch.einsum("bhqd,bhkd->bhqk", fq, fk)
    Lq, Lk = q.shape[-2], k.shape[-2]
    if causal:
        weights = weights * causal_mask_ref(Lq, Lk, device=q.device).to(torch.float64)
    if decay is not None:
        position = torch.arange(Lq, device=q.device)[:, None] + (Lk - Lq)   # (Lq, 1) absolute positions
        distance = (position - torch.arange(Lk, device=q.device)[None, :]).clamp(min=0).to(torch.float64)
        gamma = torch.as_tensor(decay, dtype=torch.float64, device=q.device).reshape(1, -1, 1, 1)
        weights = weights * gamma ** distance
    return torch.einsum("bhqk,bhkd->bhqd", weights, v) / (weights.sum(-1, keepdim=True) + eps)
# --- L09 RoPE, RMSNorm and the Hugging Face decoders ---
def rope_rotate_ref(x, positions, base=10000.0):
    """RoPE as complex multiplication, in float64: pair i of a head is the complex
    number z_i = x_i + 1j * x_{i + D/2} (rotate-half pairing), and position p turns
    it by exp(1j * p * theta_i), theta_i = base^(-2i/D). x (..., L, D), positions
    int (L,) or broadcasting against x's (..., L). Returns float64 (..., L, D)."""
    x = x.detach().to(torch.float64)
    half = x.shape[-1] // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) * 2 / x.shape[-1])  # (D/2,)
    angle = torch.as_tensor(positions, device=x.device).to(torch.float64)[..., None] * theta  # (..., L, D/2)
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1)


def rope_interleaved_to_half(w, num_heads):
    """Permute the rows of a q/k projection (num_heads * D, in) written for the
    interleaved (Meta / complex) RoPE layout, pairs (2i, 2i+1), into the
    rotate-half layout, pairs (i, i + D/2): per head, rows 0, 2, 4, ... then 1, 3, 5, ...
    (the permutation Hugging Face's Llama conversion script applies)."""
    rows, cols = w.shape
    d = rows // num_heads
    return w.view(num_heads, d // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def rms_norm_ref(x, weight=None, eps=1e-6):
    """weight * x / sqrt(mean(x^2) + eps) over the last dim, in float64."""
    x = x.detach().to(torch.float64)
    y = x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)
    return y if weight is None else y * weight.detach().to(torch.float64)


def hf_exact(hf_model):
    """Make a float64 Hugging Face Llama/Mistral compute in float64 throughout.

    By design Hugging Face rounds two things to float32 even in a float64 model:
    the RoPE angles (LlamaRotaryEmbedding casts positions and inv_freq with
    .float()) and the RMSNorm statistics (LlamaRMSNorm casts to float32), so its
    float64 logits are only float32-accurate. This replaces those two forwards,
    on this model's instances only, with the same formulas in the model's dtype;
    attention, masks, positions, caches and generation stay Hugging Face's.
    Returns the model."""
    import types

    def rms_forward(self, hidden_states):
        x = hidden_states
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))

    def rotary_forward(self, x, position_ids):
        config = self.config
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        base = config.rope_parameters["rope_theta"]
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64, device=x.device) / dim))
        freqs = position_ids[..., None].to(torch.float64) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    for module in hf_model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            module.forward = types.MethodType(rms_forward, module)
        elif name.endswith("RotaryEmbedding"):
            module.forward = types.MethodType(rotary_forward, module)
    return hf_model


def hf_decoder(vocab_size=61, hidden_size=36, intermediate_size=52, num_layers=2, num_heads=6, num_kv_heads=2,
               sliding_window=None, tie_word_embeddings=False, rope_theta=10000.0, rms_norm_eps=1e-6,
               seed=0, dtype=torch.float64, exact=True):
    """A small Hugging Face decoder with seeded random weights; nothing is downloaded.

    MistralForCausalLM when sliding_window is set, else LlamaForCausalLM; SDPA
    attention (Hugging Face's eager path gives NaN for left-padded float64 rows).
    Weights are drawn in float32 (so the float32 and float64 models hold the
    same values): projections N(0, 1/fan_in), q and k twice that scale so
    attention is peaked and a wrong position or mask shows; norm weights
    1 + N(0, 0.2^2). exact=True applies hf_exact (float64 everywhere) to a float64
    model. Returns the model in eval mode."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    kw = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
              num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
              tie_word_embeddings=tie_word_embeddings, rope_theta=rope_theta, rms_norm_eps=rms_norm_eps,
              max_position_embeddings=4096, attn_implementation="sdpa")
    if sliding_window is None:
        model = LlamaForCausalLM(LlamaConfig(**kw))
    else:
        model = MistralForCausalLM(MistralConfig(sliding_window=sliding_window, **kw))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                scale = 2.0 if name.endswith(("q_proj.weight", "k_proj.weight")) else 1.0
                p.copy_(torch.randn(p.shape, generator=gen) * scale / math.sqrt(p.shape[1]))
            else:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
    model = model.to(dtype).eval()
    if exact and dtype == torch.float64:
        hf_exact(model)
    return model


# --- L12 KV compression ---
def minmax_groups_ref(x, bits, dim, group_size=None):
    """Asymmetric min-max quantization statistics, from torch primitives.

    Groups are runs of group_size indices along `dim` (None: the whole dim).
    Returns (x_hat, scale) with x's shape, float64: x_hat = code * scale + lo with
    code = clamp(round((x - lo) / scale), 0, 2^bits - 1) (0 where scale == 0), and
    scale = (hi - lo) / (2^bits - 1) of the element's group, broadcast to every element."""
    x = x.detach()
    n = x.shape[dim]
    g = n if group_size is None else group_size
    pieces_hat, pieces_scale = [], []
    for start in range(0, n, g):
        part = x.narrow(dim, start, min(g, n - start)).to(torch.float32 if x.dtype != torch.float64 else x.dtype)
        lo = part.amin(dim=dim, keepdim=True)
        hi = part.amax(dim=dim, keepdim=True)
        scale = (hi - lo) / (2 ** bits - 1)
        code = torch.where(scale > 0, torch.round((part - lo) / torch.where(scale > 0, scale, 1.0)), 0.0)
        code = code.clamp(0, 2 ** bits - 1)
        pieces_hat.append((code * scale + lo).to(torch.float64))
        pieces_scale.append(scale.expand_as(part).to(torch.float64))
    if not pieces_hat:
        return x.to(torch.float64), torch.zeros_like(x, dtype=torch.float64)
    return torch.cat(pieces_hat, dim=dim), torch.cat(pieces_scale, dim=dim)


def decoder_visible_ref(model, ids, visible):
    """Logits of an L09-shaped decoder (Hugging Face Llama parameter names) in float64,
    with attention restricted to a given visible set: visible (L, L) bool, True = query i
    may attend to key j (positions 0..L-1, RoPE at the true positions). Built from
    torch primitives and the model's weights only."""
    p = {name: t.detach().to(torch.float64) for name, t in model.named_parameters()}
    if "lm_head.weight" not in p:
        p["lm_head.weight"] = p["embed_tokens.weight"]
    cfg = model.config
    B, L = ids.shape
    H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size // cfg.num_heads
    x = p["embed_tokens.weight"][ids]  # (B, L, hidden)
    pos = torch.arange(L)
    for i in range(cfg.num_layers):
        pre = f"layers.{i}."
        h = rms_norm_ref(x, p[pre + "input_layernorm.weight"], cfg.rms_eps)
        q = (h @ p[pre + "self_attn.q_proj.weight"].T).view(B, L, H, D).transpose(1, 2)
        k = (h @ p[pre + "self_attn.k_proj.weight"].T).view(B, L, Hkv, D).transpose(1, 2)
        v = (h @ p[pre + "self_attn.v_proj.weight"].T).view(B, L, Hkv, D).transpose(1, 2)
        q, k = rope_rotate_ref(q, pos, cfg.rope_base), rope_rotate_ref(k, pos, cfg.rope_base)
        k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
        out, _ = attention_ref(q, k, v, mask=visible)
        x = x + out.transpose(1, 2).reshape(B, L, H * D) @ p[pre + "self_attn.o_proj.weight"].T
        h = rms_norm_ref(x, p[pre + "post_attention_layernorm.weight"], cfg.rms_eps)
        gate, up = h @ p[pre + "mlp.gate_proj.weight"].T, h @ p[pre + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ p[pre + "mlp.down_proj.weight"].T
    return rms_norm_ref(x, p["norm.weight"], cfg.rms_eps) @ p["lm_head.weight"].T


def pack_codes_ref(codes, bits):
    """Integer codes (..., N) in [0, 2^bits) -> uint8 (..., ceil(N * bits / 8)) in kv_quant's layout: element j
    of a row in byte j // (8 // bits), at bits (j % (8 // bits)) * bits upwards (the first in the LOW bits);
    a row is padded with zero codes to a whole byte."""
    if bits == 8:
        return codes.to(torch.uint8)
    per_byte = 8 // bits
    codes = torch.nn.functional.pad(codes.long(), (0, (-codes.shape[-1]) % per_byte))
    fields = codes.reshape(*codes.shape[:-1], -1, per_byte)  # (..., bytes, per_byte)
    return (fields << (torch.arange(per_byte, device=codes.device) * bits)).sum(-1).to(torch.uint8)


def dequantize_codes_ref(codes, scale, zero, bits, dim, group_size, shape):
    """x_hat (float64, shape) of packed codes: unpack (pack_codes_ref's layout), then
    code * scale + zero with the statistics of each element's group of group_size indices along dim."""
    per_byte = 8 // bits
    packed = codes.detach().cpu().long()
    unpacked = ((packed[..., None] >> (torch.arange(per_byte) * bits)) & (2 ** bits - 1)).flatten(-2)
    unpacked = unpacked[..., :shape[-1]]
    n = shape[dim]
    expand = lambda t: t.detach().cpu().double().repeat_interleave(group_size, dim=dim).narrow(dim, 0, n)
    return unpacked.double() * expand(scale) + expand(zero)


def random_codes_ref(shape, bits, dim, group_size=None, *, seed=0, dtype=torch.float32):
    """Random quantized data in kv_quant.QuantizedTensor's layout, without quantize: (fields, x_hat).

    fields: dict(codes, scale, zero, bits, dim, group_size, shape, dtype) (QuantizedTensor(**fields)):
    codes uniform in [0, 2^bits) packed by pack_codes_ref; per group of group_size indices along dim
    (None: the whole dim) a scale with a group range of 0.6..3.6 and a zero point around -1.5 (so a
    forgotten zero point shows). x_hat = dequantize_codes_ref of them, float64, on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    dim = dim % len(shape)
    n = shape[dim]
    g = max(1, n if group_size is None else group_size)
    stats_shape = list(shape)
    stats_shape[dim] = math.ceil(n / g)
    codes = torch.randint(0, 2 ** bits, tuple(shape), generator=gen)
    scale = ((torch.rand(stats_shape, generator=gen) + 0.2) * 3 / (2 ** bits - 1)).to(dtype)
    zero = (torch.randn(stats_shape, generator=gen) - 1.5).to(dtype)
    fields = dict(codes=pack_codes_ref(codes, bits), scale=scale, zero=zero, bits=bits, dim=dim, group_size=g,
                  shape=tuple(shape), dtype=dtype)
    return fields, dequantize_codes_ref(fields["codes"], scale, zero, bits, dim, g, tuple(shape))
