"""L12 part 2 — Forgetting the KV cache: retention, soft deletion, sparse attention, sinks.

A retention score per cached token and per layer, on a forgetting curve
(Ebbinghaus): a token's retention decays with the time since it last received
attention, and attention received makes it decay more slowly.

    R_j(t) = exp(-(t - tau_j) / S_j)                     t: position of the newest query

    tau_j = the position of the last query that attended to j (j's own position at first)
    S_j   = its strength, in steps: S_0 when j is written; after every forward call,
            with a_j = max over the call's queries of (attention weight on j, averaged over heads):
            if a_j >= refresh:   S_j <- S_j + gain * a_j,   tau_j <- t

Defaults (ForgettingCurve): S_0 = 8 steps, gain = 32, refresh = 0.02. A token
nobody looks at for 8 steps keeps e^-1 = 37 %; one that took half of a query's
attention has S = 24 and fades three times more slowly from then on.

Three generation modes on the L09 decoder (generate_with_retention):
- "baseline": attention as L09 (retention is tracked, not used): equals L09's generate;
- "soft_delete": every logit of key j gets + log R_j = -(t - tau_j) / S_j. Multiplying
  the weight exp(s_j) by R_j is exactly this, whatever the sign of s_j. Scaling the
  KEY by R_j instead (s_j -> R_j s_j) pulls every logit towards 0: a forgotten token
  with a negative logit GAINS weight (soft_delete_scores, and the text);
- "sparse_attention": per layer, the keys with R_j < threshold (default 0.01) are
  masked out of that layer's attention (sparse_attention_masks): each layer forgets
  what IT did not attend to.
Eviction (capacity=C) frees slots: a RetentionKVCache holds at most C tokens in
preallocated buffers; when a call would exceed C, the tokens of lowest retention
are dropped (never the first num_sink ones) and their slots rewritten.

Attention sinks (StreamingLLM, Xiao et al. 2023): SinkKVCache keeps the first
num_sink tokens plus the most recent ones. RoPE: keys are cached AFTER rotation
and KEEP THEIR ORIGINAL ROTATION (the position they were computed at); a query at
position p then sees the true distance p - j to every key it still has, and the
result equals full attention restricted to the same visible set. (StreamingLLM
re-rotates keys by their slot in the cache instead, so that distances stay within
the trained range; rerotate shows the rotation that takes: R(p') R(p)^-1 = R(p' - p).)

Names: ForgettingCurve, RetentionKVCache, soft_delete_scores, sparse_attention_masks, cached_key_masks,
retention_forward, generate_with_retention, SinkKVCache, rerotate. Batches are
unpadded (every row is real tokens); a row's tokens share one time axis.

Exercises: every function and method marked with a solution block.
"""
import math
import sys
import time
from dataclasses import dataclass

import torch

from ._checks import FLOAT_DTYPES, check_cache_update, check_positive_int
from .gqa import repeat_kv
from .rope import apply_rope, rope_cos_sin

MODES = ("baseline", "soft_delete", "sparse_attention")


@dataclass(frozen=True)
class ForgettingCurve:
    """The parameters of R_j(t) = exp(-(t - tau_j) / S_j) and of its reinforcement (module text)."""
    initial_strength: float = 8.0  # S_0, in steps
    gain: float = 32.0  # strength added per unit of attention weight
    refresh: float = 0.02  # a token attended with at least this weight has "received attention"

    def __post_init__(self):
        for name in ("initial_strength", "gain", "refresh"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name == "initial_strength" and value == 0):
                raise ValueError(f"{name} must be a finite number {'> 0' if name == 'initial_strength' else '>= 0'}, "
                                 f"got {value!r}")


class RetentionKVCache:
    """One layer's cache of at most `capacity` tokens, each with its retention state.

    RetentionKVCache(batch_size, num_heads, capacity, head_dim, curve=None, num_sink=0,
                     dtype=torch.float32, device=None)

    Preallocated: keys, values (B, H, capacity, D); valid (B, capacity) bool;
    positions, last_seen (tau) (B, capacity) long; strength (B, capacity) float32.
    next_position: the position the next token gets (tokens written so far).
    retention(t) -> (B, capacity) float32: exp(-(t - tau) / S) on valid slots, 0 on free ones.
    reinforce(weights, t): weights (B, capacity) = a_j of the module text; applies the rule.
    append(k, v, t, weights=None): writes the new tokens (B, H, L, D) at positions
      next_position ..., with tau = their position, S = S_0, then applies the rule
      with `weights` (B, L) if given (the attention they got from later queries of their call). When the valid tokens plus L exceed
      capacity, the ones of lowest retention R(t) are evicted (ties: the older
      goes), never a token of position < num_sink; freed slots are reused.
    num_tokens (B,) long: tokens held. nbytes: the buffers' bytes (constant: bounded memory).
    """

    def __init__(self, batch_size, num_heads, capacity, head_dim, curve=None, num_sink=0, dtype=torch.float32,
                 device=None):
        raise NotImplementedError("L12: implement RetentionKVCache.__init__ in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")

    @property
    def num_tokens(self):
        return self.valid.sum(dim=-1)

    @property
    def nbytes(self):
        return sum(t.nbytes for t in (self.keys, self.values, self.valid, self.positions, self.last_seen,
                                      self.strength))

    def retention(self, t):
        raise NotImplementedError("L12: implement RetentionKVCache.retention in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")

    def reinforce(self, weights, t):
        raise NotImplementedError("L12: implement RetentionKVCache.reinforce in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")

    def append(self, k, v, t, weights=None):
        raise NotImplementedError("L12: implement RetentionKVCache.append in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")


def soft_delete_scores(q, k, retention, scale):
    """Scores with soft deletion: q (B, H, Lq, D), k (B, H, Lk, D), retention (B, Lk) in [0, 1]
    -> (B, H, Lq, Lk) = (q @ k^T) * scale + log(retention); retention 0 gives -inf (the key is gone).
    Adding log R to the logit multiplies the key's softmax weight by R before renormalising."""
    raise NotImplementedError("L12: implement soft_delete_scores in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")


def sparse_attention_masks(retentions, threshold=0.01):
    """One mask per layer: retentions, a list of (B, Lk) tensors (one per layer) ->
    list of bool (B, Lk), True = the key stays visible: retention >= threshold."""
    raise NotImplementedError("L12: implement sparse_attention_masks in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")


def cached_key_masks(caches, retentions, mode, threshold=0.01):
    """Per layer, the cache slots a query may attend to, bool (B, capacity): the slots that
    hold a token (valid; a free or evicted slot never), and in "sparse_attention" mode
    only those whose retention is at least the threshold (sparse_attention_masks)."""
    raise NotImplementedError("L12: implement cached_key_masks in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")


def new_retention_caches(model, batch_size, capacity, curve=None, num_sink=0):
    """One RetentionKVCache per layer of an L09 Decoder (its kv heads, head_dim, dtype, device)."""
    config, weight = model.config, model.embed_tokens.weight
    return [RetentionKVCache(batch_size, config.num_kv_heads, capacity, config.head_dim, curve=curve,
                             num_sink=num_sink, dtype=weight.dtype, device=weight.device) for _ in model.layers]


@torch.no_grad()
def retention_forward(model, input_ids, caches, mode="baseline", threshold=0.01):
    """The L09 decoder's forward on NEW tokens input_ids (B, L), attending to what
    the RetentionKVCaches hold plus the new tokens (causal among them), then
    reinforcing and appending -> (logits (B, L, vocab), stats dict):
    stats: retention (per layer, (B, C) before the call), masks (per layer, (B, C)
    bool, the cached keys attended to), tokens (per layer, (B,) keys visible to the last query).
    Positions continue from caches[0].next_position; the time t of a call is the
    position of its last token."""
    raise NotImplementedError("L12: implement retention_forward in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")


@torch.no_grad()
def generate_with_retention(model, input_ids, max_new_tokens, mode="baseline", threshold=0.01, capacity=None,
                            num_sink=0, curve=None):
    """Greedy generation on an L09 Decoder with retention tracking -> (ids (B, L + max_new_tokens), stats).

    mode: "baseline" | "soft_delete" | "sparse_attention" (module text); threshold for the
    sparse mode; capacity None: every token is kept (L + max_new_tokens slots), else
    the eviction budget per layer; num_sink: tokens never evicted.
    stats: memory_tokens (mean over decode steps, layers and rows of the keys the
    last query may attend to), mean_retention (of the cached tokens, over steps and
    layers), sparsity (fraction of cached tokens masked, mean over steps and layers),
    sparsity_per_layer (list), tokens_per_s, mode.
    """
    raise NotImplementedError("L12: implement generate_with_retention in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")


class SinkKVCache:
    """StreamingLLM: the first num_sink tokens plus a rolling window, for the L09 Decoder (caches=...).

    SinkKVCache(batch_size, num_heads, num_sink, recent, head_dim, dtype=torch.float32, device=None)

    update(k, v) -> (k_visible, v_visible): the sinks it holds (the first num_sink
    tokens ever written), then the last recent - 1 past tokens it holds, then the new
    ones. So decoding token by token, the query at position p sees exactly the keys
    j < num_sink or p - recent < j <= p. (Within a chunk of several new tokens the
    decoder's causal mask lets each see the whole chunk.) Keys keep the rotation
    of their original position (they are cached after RoPE, never re-rotated).
    Holds at most num_sink + recent - 1 tokens: nbytes is bounded. seq_len counts
    every token written; max_seq_len is unbounded (sys.maxsize).
    """

    def __init__(self, batch_size, num_heads, num_sink, recent, head_dim, dtype=torch.float32, device=None):
        raise NotImplementedError("L12: implement SinkKVCache.__init__ in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")

    def update(self, k, v):
        raise NotImplementedError("L12: implement SinkKVCache.update in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")

    def reset(self):
        raise NotImplementedError("L12: implement SinkKVCache.reset in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")

    @property
    def nbytes(self):
        return sum(t.nbytes for t in (self.k_sink, self.v_sink, self.k_recent, self.v_recent))


def rerotate(k, from_positions, to_positions, base=10000.0):
    """Keys rotated by RoPE at from_positions -> the same keys rotated at to_positions:
    apply_rope with the angle of (to - from), since R(p') = R(p' - p) R(p) for rotations.
    k (B, H, L, D); positions int (..., L)."""
    raise NotImplementedError("L12: implement rerotate in model/kv_eviction.py (see tutorial/L12_kv_compression/README.md)")
