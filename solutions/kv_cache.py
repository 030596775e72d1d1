"""L04 — KV-cache and incremental decoding.

A decoder generates one token at a time: token t+1 depends on tokens 0..t. Done
naively, step t feeds all t tokens through the model again, so every layer
recomputes the keys and values of t tokens whose keys and values have not
changed since the step before. Summed over T generated tokens that is
1 + 2 + ... + T = T(T+1)/2 token projections: quadratic in T.

The keys and values of a causal decoder never change once computed (a token
never sees later tokens), so we keep them. With a KV cache, step t projects
ONE new token (one q, k, v per head), appends its k and v to the cache, and
lets its query attend over the t cached keys:

    q_t = x_t W_q,  k_t = x_t W_k,  v_t = x_t W_v          one token: O(d^2) per layer
    K = [k_0; ...; k_t],  V = [v_0; ...; v_t]               read from the cache
    o_t = softmax(q_t K^T / sqrt(D)) V                      O(t D) per head

Projections cost O(T) over the whole generation, attention O(T^2) (each step
reads t cached keys) instead of O(T^3) for recomputing full attention each step.
The price is memory: 2 (K and V) * layers * B * H * max_seq_len * D elements.

Shapes (course-wide letters): hidden states x (B, L, d_model) with
d_model = H * D; per-head q (B, H, Lq, D), cached k and v (B, H, Lk, D);
scores (B, H, Lq, Lk). During decoding Lq is the number of NEW tokens and Lk the
number of cached keys after the update, so Lq <= Lk.

Conventions (tutorial/CONVENTIONS.md): causal alignment is bottom-right, so query i of the Lq
new tokens sits at absolute position i + Lk - Lq and sees keys j <= i + Lk - Lq;
key_padding_mask is (B, Lk), True = real token, over ALL keys attended to (the
cached ones included); a fully masked query row gives output 0.

This lesson builds on two earlier ones: attention itself is L01's
scaled_dot_product_attention and the causal mask is L03's causal_mask, imported
from this package below. Finish L01 and L03 first (or call torch primitives
instead: the tests only check what comes out).

Given code (no exercise): KVCache.nbytes, DecoderBlock, TinyDecoder.
Exercises: KVCache.__init__/update/reset, MultiHeadAttention.__init__/forward,
token_positions, greedy_generate.
"""
import torch
import torch.nn as nn

from ._checks import (FLOAT_DTYPES, check_cache_update, check_flag, check_key_padding_mask, check_non_negative_int,
                      check_positive_int, check_tensor)
from .masks import causal_mask
from .scaled_dot_product import scaled_dot_product_attention


class KVCache:
    """Preallocated key and value buffers for one attention layer.

    KVCache(batch_size, num_heads, max_seq_len, head_dim, dtype=torch.float32, device=None)

    __init__ allocates the two buffers ONCE, as attributes
        self.k_cache, self.v_cache: (B, H, max_seq_len, D) of `dtype` on `device`
    and sets self.seq_len = 0 (the number of positions filled). Keep the
    arguments as attributes too (batch_size, num_heads, max_seq_len, head_dim,
    dtype, device). The arguments must be positive ints (TypeError for a
    non-int, ValueError below 1) and dtype a floating dtype (TypeError).

    No step allocates again: update writes into the buffers in place, and
    reset rewinds seq_len so the next sequence reuses the same memory.
    """

    def __init__(self, batch_size, num_heads, max_seq_len, head_dim, dtype=torch.float32, device=None):
        ### BEGIN SOLUTION
        for name, value in (("batch_size", batch_size), ("num_heads", num_heads),
                            ("max_seq_len", max_seq_len), ("head_dim", head_dim)):
            check_positive_int(name, value)
        if dtype not in FLOAT_DTYPES:
            allowed = ", ".join(str(d).replace("torch.", "") for d in FLOAT_DTYPES)
            raise TypeError(f"dtype must be a floating dtype ({allowed}), got {dtype}")
        self.batch_size, self.num_heads = batch_size, num_heads
        self.max_seq_len, self.head_dim = max_seq_len, head_dim
        shape = (batch_size, num_heads, max_seq_len, head_dim)  # (B, H, max_seq_len, D)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.dtype, self.device = dtype, self.k_cache.device
        self.seq_len = 0
        ### END SOLUTION

    def update(self, k, v):
        """Append new keys and values; return everything cached so far.

        k, v: (B, H, L_new, D), the cache's batch, heads, head_dim and dtype.
        Writes them IN PLACE at positions [seq_len, seq_len + L_new) of the
        buffers, advances seq_len by L_new, and returns
            k_all, v_all: (B, H, seq_len, D)
        as VIEWS of the buffers' filled prefix (slices, no torch.cat, no copy).
        An empty update (L_new = 0) is a no-op that returns the current contents.

        Errors (each leaves the cache unchanged):
        - k or v not a 4-D float tensor, or k.shape != v.shape: TypeError/ValueError naming it;
        - batch, heads or head_dim different from the cache's: ValueError naming k;
        - dtype different from the cache's: TypeError naming k and the dtypes;
        - seq_len + L_new > max_seq_len: ValueError naming both sizes, e.g.
          "cache holds 4096 positions, update would make it 4100".
        """
        ### BEGIN SOLUTION
        check_cache_update(self, k, v)
        start, end = self.seq_len, self.seq_len + k.shape[-2]
        if end > self.max_seq_len:
            raise ValueError(f"cache holds {self.max_seq_len} positions, update would make it {end} "
                             f"({self.seq_len} cached + {k.shape[-2]} new)")
        # In place: copy_ into a slice of the preallocated buffer. Nothing is allocated,
        # and the views returned at earlier steps keep pointing at the same memory.
        self.k_cache[:, :, start:end] = k  # (B, H, L_new, D) -> positions [start, end)
        self.v_cache[:, :, start:end] = v
        self.seq_len = end
        return self.k_cache[:, :, :end], self.v_cache[:, :, :end]  # views (B, H, seq_len, D)
        ### END SOLUTION

    def reset(self):
        """Forget the cached positions (seq_len = 0) and keep the buffers: the
        next update writes at position 0 of the same memory. Stale values past
        seq_len are never read, so there is no need to zero them."""
        ### BEGIN SOLUTION
        self.seq_len = 0
        ### END SOLUTION

    @property
    def nbytes(self):
        """Bytes held by the two buffers: 2 * B * H * max_seq_len * D * element size."""
        return self.k_cache.nbytes + self.v_cache.nbytes


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention that can decode with a KVCache.

    MultiHeadAttention(d_model, num_heads, bias=False)

    __init__ checks that d_model and num_heads are positive ints and that
    num_heads divides d_model (ValueError naming both otherwise), stores
    num_heads and head_dim = d_model // num_heads, and creates four
    nn.Linear(d_model, d_model, bias=bias): q_proj, k_proj, v_proj, o_proj.
    Head h owns output features [h * D, (h + 1) * D) of q_proj, k_proj and
    v_proj, and o_proj maps the heads, concatenated in that order, back to d_model.
    """

    def __init__(self, d_model, num_heads, bias=False):
        super().__init__()
        ### BEGIN SOLUTION
        check_positive_int("d_model", d_model)
        check_positive_int("num_heads", num_heads)
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        ### END SOLUTION

    def forward(self, x, key_padding_mask=None, cache=None, causal=True):
        """x (B, L, d_model) -> (B, L, d_model), in x's dtype.

        Projects x to q, k, v and splits the heads: (B, L, d_model) ->
        (B, L, H, D) -> (B, H, L, D).
        - cache None: the L tokens attend to each other (Lk = L).
        - cache given: the new k, v go through cache.update, and the L queries
          attend to every cached key (Lk = cache.seq_len after the update).
        causal=True: bottom-right causal mask, query i sees keys j <= i + Lk - L.
        key_padding_mask: None or bool (B, Lk), True = real token, covering ALL
          keys attended to (the cached ones included). Queries whose keys are all
          masked give 0 before o_proj.
        Checks, all BEFORE the cache is touched (a rejected call leaves it as it was):
        x a 3-D float tensor with last dim d_model and the weights' dtype;
        key_padding_mask a bool tensor of shape (B, Lk); causal a bool.
        """
        ### BEGIN SOLUTION
        _check_forward(self, x, key_padding_mask, cache, causal)
        B, L, _ = x.shape
        H, D = self.num_heads, self.head_dim

        def split_heads(t):  # (B, L, d_model) -> (B, L, H, D) -> (B, H, L, D)
            return t.view(B, L, H, D).transpose(1, 2)

        q = split_heads(self.q_proj(x))
        k = split_heads(self.k_proj(x))
        v = split_heads(self.v_proj(x))
        if cache is not None:
            k, v = cache.update(k, v)  # (B, H, Lk, D): every cached key, this step's included
        Lk = k.shape[-2]

        mask = causal_mask(L, Lk, device=x.device) if causal else None  # (Lq, Lk), bottom-right
        if key_padding_mask is not None:
            keys = key_padding_mask[:, None, None, :]  # (B, Lk) -> (B, 1, 1, Lk): same for every head, query
            mask = keys if mask is None else mask & keys  # -> (B, 1, Lq, Lk)
        out = scaled_dot_product_attention(q, k, v, mask=mask)  # (B, H, Lq, D); empty rows give 0
        out = out.transpose(1, 2).reshape(B, L, H * D)  # (B, H, L, D) -> (B, L, H, D) -> (B, L, d_model)
        return self.o_proj(out)
        ### END SOLUTION


### BEGIN SOLUTION
def _check_forward(module, x, key_padding_mask, cache, causal):
    check_tensor("x", x, min_dim=3)
    if x.dim() != 3 or x.shape[-1] != module.d_model:
        raise ValueError(f"x must be (B, L, d_model={module.d_model}), got shape {tuple(x.shape)}")
    if x.dtype != module.q_proj.weight.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the module's weights are {module.q_proj.weight.dtype}")
    check_flag("causal", causal)
    B, L, _ = x.shape
    past = 0
    if cache is not None:
        expected = (B, module.num_heads, module.head_dim)
        got = (cache.batch_size, cache.num_heads, cache.head_dim)
        if got != expected:
            raise ValueError(f"cache was made for (batch, heads, head_dim) = {got}, but this call "
                             f"needs {expected}")
        if cache.dtype != x.dtype:
            raise TypeError(f"cache holds {cache.dtype} but x is {x.dtype}")
        past = cache.seq_len
    if key_padding_mask is not None:
        check_key_padding_mask(key_padding_mask, B, past, L, x.device, "x")
### END SOLUTION


def token_positions(past_len, new_len, key_padding_mask=None, device=None):
    """Absolute positions of `new_len` new tokens that follow `past_len` cached ones.

    Without a mask: [[past_len, past_len + 1, ..., past_len + new_len - 1]],
    shape (1, new_len), long, shared by every row of the batch. Decoding step t
    (past_len = t, new_len = 1) is position t, not 0.
    With key_padding_mask (B, past_len + new_len), True = real token, positions
    count real tokens only: the position of a token is the number of real tokens
    before it, so a left-padded row numbers its first real token 0, as if the
    padding were not there (padding itself gets position 0; it is masked anyway).
    Returns (B, new_len), long. past_len and new_len are ints >= 0 (new_len = 0
    gives an empty result); a mask of another length raises ValueError naming
    key_padding_mask.
    """
    ### BEGIN SOLUTION
    check_non_negative_int("past_len", past_len)
    check_non_negative_int("new_len", new_len)
    if key_padding_mask is None:
        return torch.arange(past_len, past_len + new_len, device=device)[None, :]  # (1, L_new)
    if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
        raise TypeError("key_padding_mask must be a bool tensor (True = real token)")
    if key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != past_len + new_len:
        raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected "
                         f"(B, past_len + new_len) = (B, {past_len + new_len})")
    real_before = key_padding_mask.long().cumsum(dim=-1) - 1  # (B, Lk): real tokens up to j, minus one
    return real_before.clamp(min=0)[:, past_len:]  # (B, L_new)
    ### END SOLUTION


class DecoderBlock(nn.Module):
    """Pre-norm transformer block (given): x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, d_model, num_heads, mlp_ratio=4):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, num_heads)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))

    def forward(self, x, key_padding_mask=None, cache=None):
        x = x + self.attn(self.ln_1(x), key_padding_mask=key_padding_mask, cache=cache)
        return x + self.mlp(self.ln_2(x))


class TinyDecoder(nn.Module):
    """A small decoder-only language model built from this lesson's modules (given).

    Token embedding + learned position embedding -> num_layers DecoderBlocks
    -> LayerNorm -> LM head. Randomly initialised: it generates nonsense, but
    deterministic nonsense, which is all we need to check that decoding with
    and without the cache gives the same tokens.

    forward(ids, key_padding_mask=None, caches=None) -> logits (B, L, vocab_size)
      ids (B, L) long: the NEW tokens (all of them without caches).
      caches: None, or a list of one KVCache per layer (new_caches); the new
        tokens' positions then start at caches[0].seq_len (token_positions).
      key_padding_mask: (B, Lk) bool over all keys, as in MultiHeadAttention.
    """

    def __init__(self, vocab_size=256, d_model=64, num_heads=4, num_layers=2, max_positions=1024, mlp_ratio=4):
        super().__init__()
        self.vocab_size, self.max_positions = vocab_size, max_positions
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_positions, d_model)
        self.blocks = nn.ModuleList(DecoderBlock(d_model, num_heads, mlp_ratio) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

    def new_caches(self, batch_size, max_seq_len):
        """One empty KVCache per layer, in the model's dtype and on its device."""
        weight = self.lm_head.weight
        return [KVCache(batch_size, block.attn.num_heads, max_seq_len, block.attn.head_dim,
                        dtype=weight.dtype, device=weight.device) for block in self.blocks]

    def forward(self, ids, key_padding_mask=None, caches=None):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            raise TypeError("ids must be a (B, L) long tensor of token ids")
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"caches has {len(caches)} entries, the model has {len(self.blocks)} layers")
        past = caches[0].seq_len if caches is not None else 0
        positions = token_positions(past, ids.shape[1], key_padding_mask, device=ids.device)  # (1 or B, L)
        if past + ids.shape[1] > self.max_positions:
            raise ValueError(f"position {past + ids.shape[1] - 1} is past max_positions={self.max_positions}")
        x = self.tok_emb(ids) + self.pos_emb(positions)  # (B, L, d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, key_padding_mask, None if caches is None else caches[i])
        return self.lm_head(self.ln_f(x))  # (B, L, vocab_size)


@torch.no_grad()
def greedy_generate(model, prompt_ids, max_new_tokens, use_cache=True, prompt_mask=None):
    """Greedy decoding: append argmax(logits of the last position), max_new_tokens times.

    prompt_ids (B, P) long -> (B, P + max_new_tokens) long: the prompt, then the new tokens.
    use_cache=False: every step runs model(all tokens so far) and keeps the last logits.
    use_cache=True: caches = model.new_caches(B, P + max_new_tokens); ONE prefill call
      on the whole prompt, then each step feeds only the token just chosen (B, 1).
    Both give identical tokens. prompt_mask: None or bool (B, P), True = real token,
      for left-padded prompts; it grows by one True column per generated token and is
      passed as key_padding_mask (over all keys). max_new_tokens: an int >= 0;
      use_cache: a bool.
    """
    ### BEGIN SOLUTION
    check_flag("use_cache", use_cache)
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dtype != torch.long or prompt_ids.dim() != 2:
        raise TypeError("prompt_ids must be a (B, P) long tensor")
    check_non_negative_int("max_new_tokens", max_new_tokens)
    if prompt_mask is not None and (not isinstance(prompt_mask, torch.Tensor) or prompt_mask.dtype != torch.bool
                                    or prompt_mask.shape != prompt_ids.shape):
        raise ValueError(f"prompt_mask must be a bool tensor of prompt_ids' shape {tuple(prompt_ids.shape)}")
    ids, mask = prompt_ids, prompt_mask
    B = ids.shape[0]
    caches = model.new_caches(B, ids.shape[1] + max_new_tokens) if use_cache else None
    new = ids  # what the next forward call sees: the whole prompt first (prefill)
    for _ in range(max_new_tokens):
        logits = model(new if use_cache else ids, key_padding_mask=mask, caches=caches)  # (B, L, V)
        next_id = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
        ids = torch.cat([ids, next_id], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        new = next_id  # with the cache, the next step feeds only this token
    return ids
    ### END SOLUTION
