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
    raise NotImplementedError("L06: implement repeat_kv in model/gqa.py (see tutorial/L06_gqa/README.md)")


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
        raise NotImplementedError("L06: implement GroupedQueryAttention.__init__ in model/gqa.py (see tutorial/L06_gqa/README.md)")

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
        raise NotImplementedError("L06: implement GroupedQueryAttention.forward in model/gqa.py (see tutorial/L06_gqa/README.md)")


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
    raise NotImplementedError("L06: implement mha_to_gqa in model/gqa.py (see tutorial/L06_gqa/README.md)")


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
    raise NotImplementedError("L06: implement kv_cache_bytes in model/gqa.py (see tutorial/L06_gqa/README.md)")

