"""L06 — Multi-query and grouped-query attention.

A decoding step reads every cached key and value of every layer to produce ONE
token per sequence, and does very little arithmetic with them: about one
multiply-add per element read. So once the context is long, a step costs what
it costs to read the cache, and the cache is

    bytes = 2 (K and V) * layers * B * Hkv * L * D * element size.

Multi-head attention (MHA) keeps one key/value head per query head (Hkv = H).
Multi-query attention (MQA, Shazeer 2019) keeps a single one (Hkv = 1) that
every query head shares. Grouped-query attention (GQA, Ainslie et al. 2023) sits
in between: the H query heads form Hkv groups of n_rep = H / Hkv adjacent heads,
and each group shares one key/value head. The cache, and the bytes a step
reads, shrink by n_rep; the queries (and the model's output width) stay as wide.

Head mapping (tutorial/CONVENTIONS.md, as Hugging Face's repeat_kv and SDPA's enable_gqa):
query head h uses key/value head h // n_rep. Interleaved, not tiled:

    H = 6, Hkv = 2, n_rep = 3:   query heads  0 1 2 | 3 4 5
                                 K/V head     0 0 0 | 1 1 1     (h // 3)
    NOT tiled (h % Hkv):         K/V head     0 1 0 | 1 0 1     (what x.repeat gives)

Shapes (course letters): hidden states (B, L, hidden) with hidden = H * D;
q (B, H, Lq, D); k and v (B, Hkv, Lk, D), repeated to (B, H, Lk, D) only for the
attention itself. A KV cache stores the Hkv heads, never the repeated ones.

Conventions (the same as L04's MultiHeadAttention): bottom-right causal
alignment (query i of Lq sees keys j <= i + Lk - Lq), key_padding_mask (B, Lk),
True = real token, over ALL keys attended to (cached ones included), and a
query whose keys are all masked gives 0.

The module uses your L01 attention and L03 causal mask, imported below, and any
cache object with L04's KVCache interface (update(k, v) -> (k_all, v_all),
seq_len); it does not import kv_cache itself.

Exercises: repeat_kv, GroupedQueryAttention.__init__/forward, mha_to_gqa,
kv_cache_bytes.
"""
import torch
import torch.nn as nn

from ._checks import check_key_padding_mask, check_positive_int, check_tensor, compute_dtype
from .masks import causal_mask
from .scaled_dot_product import scaled_dot_product_attention


def repeat_kv(x, n_rep):
    """Repeat each key/value head n_rep times, INTERLEAVED.

    x (B, Hkv, L, D) -> (B, Hkv * n_rep, L, D), where output head h is input
    head h // n_rep: heads 0..n_rep-1 are copies of input head 0, the next n_rep
    copies of input head 1, and so on. This is torch.repeat_interleave(x, n_rep,
    dim=1) (and Hugging Face's repeat_kv), NOT x.repeat(1, n_rep, 1, 1), which
    tiles the heads (output head h = input head h % Hkv).
    n_rep == 1 returns x itself. Any dtype and device; x must be 4-D and n_rep
    a positive int (ValueError/TypeError naming x or n_rep otherwise).
    """
    ### BEGIN SOLUTION
    check_tensor("x", x, min_dim=4, dtypes=None)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, Hkv, L, D), got shape {tuple(x.shape)}")
    check_positive_int("n_rep", n_rep)
    if n_rep == 1:
        return x
    B, Hkv, L, D = x.shape
    # expand adds a size-n_rep axis right after the head axis without copying (stride 0);
    # reshape then has to copy, and lays the copies of head g next to each other.
    x = x[:, :, None, :, :].expand(B, Hkv, n_rep, L, D)  # (B, Hkv, n_rep, L, D)
    return x.reshape(B, Hkv * n_rep, L, D)  # head g * n_rep + r = copy r of head g
    ### END SOLUTION


class GroupedQueryAttention(nn.Module):
    """Causal grouped-query self-attention that can decode with a KV cache.

    GroupedQueryAttention(hidden_size, num_heads, num_kv_heads, bias=False)

    num_kv_heads == num_heads is multi-head attention, num_kv_heads == 1 is
    multi-query attention. __init__ checks that all three counts are positive
    ints, that bias is a bool (TypeError), that num_heads divides hidden_size and
    that num_kv_heads divides num_heads (ValueError naming the arguments and
    their values otherwise), and
    stores hidden_size, num_heads, num_kv_heads, head_dim = hidden_size //
    num_heads and n_rep = num_heads // num_kv_heads (query heads per key/value
    head; Hugging Face calls it num_key_value_groups). Projections, in Hugging
    Face Llama's shapes (nn.Linear(in, out, bias=bias)):
        q_proj: hidden_size -> num_heads * head_dim
        k_proj: hidden_size -> num_kv_heads * head_dim
        v_proj: hidden_size -> num_kv_heads * head_dim
        o_proj: num_heads * head_dim -> hidden_size
    Query head h owns output features [h * D, (h + 1) * D) of q_proj; key/value
    head g owns [g * D, (g + 1) * D) of k_proj and v_proj.
    """

    def __init__(self, hidden_size, num_heads, num_kv_heads, bias=False):
        super().__init__()
        ### BEGIN SOLUTION
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_heads", num_heads)
        check_positive_int("num_kv_heads", num_kv_heads)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}: "
                             "every key/value head must serve the same number of query heads")
        self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.n_rep = num_heads // num_kv_heads
        D = self.head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * D, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * D, bias=bias)  # n_rep times narrower than q_proj
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * D, bias=bias)
        self.o_proj = nn.Linear(num_heads * D, hidden_size, bias=bias)
        ### END SOLUTION

    def forward(self, hidden_states, key_padding_mask=None, cache=None, causal=True):
        """hidden_states (B, L, hidden_size) -> (B, L, hidden_size), in its dtype.

        q = q_proj(x) split into H heads: (B, L, H*D) -> (B, L, H, D) -> (B, H, L, D);
        k, v = k_proj(x), v_proj(x) split into Hkv heads: (B, Hkv, L, D).
        - cache None: the L tokens attend to each other (Lk = L).
        - cache given (L04's KVCache built with num_kv_heads heads, or anything
          with its update/seq_len interface): the new k, v of Hkv heads go through
          cache.update, which returns every cached key and value (B, Hkv, Lk, D).
        Then repeat_kv(k, n_rep) and repeat_kv(v, n_rep) give (B, H, Lk, D), and
        each query head h attends with key/value head h // n_rep.
        causal=True: bottom-right causal mask, query i sees keys j <= i + Lk - L.
        key_padding_mask: None or bool (B, Lk), True = real token, covering ALL
          keys attended to (the cached ones included). Queries with no visible
          key give 0 before o_proj.
        Checks, all BEFORE the cache is touched (a rejected call leaves it as it
        was): hidden_states a 3-D float tensor with last dim hidden_size and the
        weights' dtype; a cache made for (batch, num_kv_heads, head_dim) and the
        same dtype (ValueError naming cache and the head counts: a cache made
        with num_heads heads is the classic mistake); key_padding_mask a bool
        tensor of shape (B, Lk); causal a bool.
        """
        ### BEGIN SOLUTION
        _check_forward(self, hidden_states, key_padding_mask, cache, causal)
        B, L, _ = hidden_states.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim

        def split_heads(t, heads):  # (B, L, heads * D) -> (B, L, heads, D) -> (B, heads, L, D)
            return t.view(B, L, heads, D).transpose(1, 2)

        q = split_heads(self.q_proj(hidden_states), H)  # (B, H, L, D)
        k = split_heads(self.k_proj(hidden_states), Hkv)  # (B, Hkv, L, D)
        v = split_heads(self.v_proj(hidden_states), Hkv)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, Hkv, Lk, D): the cache holds Hkv heads, never the repeated H
        Lk = k.shape[-2]
        k = repeat_kv(k, self.n_rep)  # (B, Hkv, Lk, D) -> (B, H, Lk, D), head h = kv head h // n_rep
        v = repeat_kv(v, self.n_rep)

        mask = causal_mask(L, Lk, device=hidden_states.device) if causal else None  # (Lq, Lk), bottom-right
        if key_padding_mask is not None:
            keys = key_padding_mask[:, None, None, :]  # (B, Lk) -> (B, 1, 1, Lk): every head, every query
            mask = keys if mask is None else mask & keys  # -> (B, 1, Lq, Lk)
        out = scaled_dot_product_attention(q, k, v, mask=mask)  # (B, H, Lq, D); empty rows give 0
        out = out.transpose(1, 2).reshape(B, L, H * D)  # (B, H, L, D) -> (B, L, H, D) -> (B, L, H*D)
        return self.o_proj(out)
        ### END SOLUTION


### BEGIN SOLUTION
def _check_forward(module, x, key_padding_mask, cache, causal):
    check_tensor("hidden_states", x, min_dim=3)
    if x.dim() != 3 or x.shape[-1] != module.hidden_size:
        raise ValueError(f"hidden_states must be (B, L, hidden_size={module.hidden_size}), "
                         f"got shape {tuple(x.shape)}")
    if x.dtype != module.q_proj.weight.dtype:
        raise TypeError(f"hidden_states has dtype {x.dtype} but the module's weights are {module.q_proj.weight.dtype}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    B, L, _ = x.shape
    past = 0
    if cache is not None:
        if not callable(getattr(cache, "update", None)) or not hasattr(cache, "seq_len"):
            raise TypeError(f"cache must have update(k, v) and seq_len (L04's KVCache), got {type(cache).__name__}")
        heads = getattr(cache, "num_heads", module.num_kv_heads)
        if heads != module.num_kv_heads:
            raise ValueError(
                f"cache holds {heads} heads, but this module has num_kv_heads={module.num_kv_heads} "
                f"(num_heads={module.num_heads}): the cache stores keys and values BEFORE repeat_kv, so "
                f"build it with num_kv_heads heads")
        expected = (B, module.head_dim)
        got = (getattr(cache, "batch_size", B), getattr(cache, "head_dim", module.head_dim))
        if got != expected:
            raise ValueError(f"cache was made for (batch, head_dim) = {got}, but this call needs {expected}")
        cache_dtype = getattr(cache, "dtype", x.dtype)
        if cache_dtype != x.dtype:
            raise TypeError(f"cache holds {cache_dtype} but hidden_states is {x.dtype}")
        past = cache.seq_len
    if key_padding_mask is not None:
        check_key_padding_mask(key_padding_mask, B, past, L, x.device, "hidden_states")
### END SOLUTION


def mha_to_gqa(module, num_kv_heads):
    """Convert an attention module to GQA with num_kv_heads key/value heads by
    MEAN-POOLING the key and value projections of each group (Ainslie et al. 2023).

    module: a GroupedQueryAttention, usually with num_kv_heads == num_heads (an
      MHA checkpoint), or L04's kv_cache.MultiHeadAttention (the same q/k/v/o_proj
      layout; it counts as num_kv_heads == num_heads). A GQA module with more
      key/value heads than asked for is pooled further the same way (num_kv_heads
      must divide its number of key/value heads).
    Returns a NEW GroupedQueryAttention(hidden_size, num_heads, num_kv_heads,
    bias) with the source's dtype, device and training mode:
      - q_proj, o_proj: copies of the source's (equal values, their own memory);
      - k_proj, v_proj: with r = (source key/value heads) / num_kv_heads, new head g is
            W^(g) = (1/r) * sum_{j=0}^{r-1} W_src^(g*r + j)      (weights, and biases if any)
        where W^(g) is the block of D rows [g*D, (g+1)*D): the r ADJACENT source
        heads that query heads g*n_rep ... (g+1)*n_rep - 1 used, averaged.
    With num_kv_heads equal to the source's count nothing is averaged and the
    outputs are the source's. The source module is not modified and shares no
    memory with the result. Errors: module without q/k/v/o_proj nn.Linear and
    num_heads (TypeError naming module); num_kv_heads not a positive int or not a
    divisor of the source's key/value heads (ValueError naming num_kv_heads and
    the counts).
    """
    ### BEGIN SOLUTION
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
    gqa = gqa.to(device=weight.device, dtype=weight.dtype).train(module.training)

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
    ### END SOLUTION


def kv_cache_bytes(batch_size, seq_len, num_layers, num_kv_heads, head_dim, dtype):
    """Bytes of the KV cache of a whole model:

        2 (K and V) * num_layers * batch_size * num_kv_heads * seq_len * head_dim * element size

    of `dtype` (a torch.dtype: 2 bytes for bfloat16/float16, 4 for float32).
    Only the key/value heads are cached, so the number of query heads does not
    appear. Returns a Python int. batch_size and seq_len are ints >= 0 (an
    empty batch or an empty cache holds 0 bytes); num_layers, num_kv_heads and
    head_dim are positive ints (TypeError for a non-int, ValueError for a value
    out of range, naming the argument and its value); dtype must be a
    torch.dtype (TypeError).
    """
    ### BEGIN SOLUTION
    for name, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
        check_positive_int(name, value)
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    element_size = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * batch_size * num_kv_heads * seq_len * head_dim * element_size
    ### END SOLUTION

