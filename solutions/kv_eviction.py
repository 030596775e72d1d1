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
        ### BEGIN SOLUTION
        for name, value in (("batch_size", batch_size), ("num_heads", num_heads), ("capacity", capacity),
                            ("head_dim", head_dim)):
            check_positive_int(name, value)
        if isinstance(num_sink, bool) or not isinstance(num_sink, int) or not 0 <= num_sink < capacity:
            raise ValueError(f"num_sink must be an int in [0, capacity={capacity}), got {num_sink!r}")
        if curve is not None and not isinstance(curve, ForgettingCurve):
            raise TypeError(f"curve must be a ForgettingCurve or None, got {type(curve).__name__}")
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        self.batch_size, self.num_heads, self.capacity, self.head_dim = batch_size, num_heads, capacity, head_dim
        self.curve = curve or ForgettingCurve()
        self.num_sink, self.dtype = num_sink, dtype
        self.keys = torch.zeros(batch_size, num_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.device = self.keys.device
        self.valid = torch.zeros(batch_size, capacity, dtype=torch.bool, device=self.device)
        self.positions = torch.zeros(batch_size, capacity, dtype=torch.long, device=self.device)
        self.last_seen = torch.zeros_like(self.positions)
        self.strength = torch.ones(batch_size, capacity, dtype=torch.float32, device=self.device)
        self.next_position = 0
        ### END SOLUTION

    @property
    def num_tokens(self):
        return self.valid.sum(dim=-1)

    @property
    def nbytes(self):
        return sum(t.nbytes for t in (self.keys, self.values, self.valid, self.positions, self.last_seen,
                                      self.strength))

    def retention(self, t):
        ### BEGIN SOLUTION
        age = (t - self.last_seen).clamp(min=0).to(torch.float32)  # steps since the last attention
        return torch.where(self.valid, torch.exp(-age / self.strength), torch.zeros_like(self.strength))
        ### END SOLUTION

    def reinforce(self, weights, t):
        ### BEGIN SOLUTION
        attended = self.valid & (weights >= self.curve.refresh)  # (B, capacity)
        self.strength = torch.where(attended, self.strength + self.curve.gain * weights.float(), self.strength)
        self.last_seen = torch.where(attended, torch.full_like(self.last_seen, t), self.last_seen)
        ### END SOLUTION

    def append(self, k, v, t, weights=None):
        ### BEGIN SOLUTION
        check_cache_update(self, k, v)
        B, L = k.shape[0], k.shape[2]
        new_pos = torch.arange(self.next_position, self.next_position + L, device=self.device).expand(B, L)
        # candidates: the slots, then the new tokens; keep the `capacity` of highest retention
        keys = torch.cat([self.keys, k], dim=2)  # (B, H, C + L, D)
        values = torch.cat([self.values, v], dim=2)
        valid = torch.cat([self.valid, torch.ones(B, L, dtype=torch.bool, device=self.device)], dim=1)
        positions = torch.cat([self.positions, new_pos], dim=1)
        s_new = torch.full((B, L), float(self.curve.initial_strength), device=self.device)
        if weights is not None:  # attention the new tokens received from later queries of their own call
            attended = weights >= self.curve.refresh
            s_new = torch.where(attended, s_new + self.curve.gain * weights.float(), s_new)
            new_pos_seen = torch.where(attended, torch.full_like(new_pos, t), new_pos)
        else:
            new_pos_seen = new_pos
        last_seen = torch.cat([self.last_seen, new_pos_seen], dim=1)
        strength = torch.cat([self.strength, s_new], dim=1)
        age = (t - last_seen).clamp(min=0).float()
        score = torch.where(valid, torch.exp(-age / strength), torch.full_like(strength, -1.0))
        score = torch.where(valid & (positions < self.num_sink), torch.full_like(score, 2.0), score)  # sinks stay
        by_age = torch.argsort(positions, dim=1, descending=True, stable=True)  # newest first
        by_score = torch.argsort(torch.gather(score, 1, by_age), dim=1, descending=True, stable=True)
        order = torch.gather(by_age, 1, by_score)  # highest retention first; ties: the newer first
        keep = order[:, :self.capacity]  # (B, C): the slots' new contents
        gather = lambda x: torch.gather(x, 1, keep)
        self.valid.copy_(gather(valid))
        self.positions.copy_(gather(positions))
        self.last_seen.copy_(gather(last_seen))
        self.strength.copy_(gather(strength))
        index = keep[:, None, :, None].expand(B, self.num_heads, self.capacity, self.head_dim)
        self.keys.copy_(torch.gather(keys, 2, index))  # in place: the buffers never grow
        self.values.copy_(torch.gather(values, 2, index))
        self.next_position += L
        ### END SOLUTION


def soft_delete_scores(q, k, retention, scale):
    """Scores with soft deletion: q (B, H, Lq, D), k (B, H, Lk, D), retention (B, Lk) in [0, 1]
    -> (B, H, Lq, Lk) = (q @ k^T) * scale + log(retention); retention 0 gives -inf (the key is gone).
    Adding log R to the logit multiplies the key's softmax weight by R before renormalising."""
    ### BEGIN SOLUTION
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Lq, D) @ (B, H, D, Lk) -> (B, H, Lq, Lk)
    return scores + torch.log(retention.to(scores.dtype))[:, None, None, :]
    ### END SOLUTION


def sparse_attention_masks(retentions, threshold=0.01):
    """One mask per layer: retentions, a list of (B, Lk) tensors (one per layer) ->
    list of bool (B, Lk), True = the key stays visible: retention >= threshold."""
    ### BEGIN SOLUTION
    return [r >= threshold for r in retentions]
    ### END SOLUTION


def cached_key_masks(caches, retentions, mode, threshold=0.01):
    """Per layer, the cache slots a query may attend to, bool (B, capacity): the slots that
    hold a token (valid; a free or evicted slot never), and in "sparse_attention" mode
    only those whose retention is at least the threshold (sparse_attention_masks)."""
    ### BEGIN SOLUTION
    if mode == "sparse_attention":
        return [m & c.valid for m, c in zip(sparse_attention_masks(retentions, threshold), caches)]
    return [c.valid.clone() for c in caches]
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    B, L = input_ids.shape
    config = model.config
    start = caches[0].next_position
    t = start + L - 1
    positions = torch.arange(start, start + L, device=input_ids.device)[None]  # (1, L)
    weight = model.embed_tokens.weight
    angle_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    cos, sin = rope_cos_sin(positions, config.head_dim, config.rope_base, dtype=angle_dtype)
    retentions = [cache.retention(t) for cache in caches]  # each layer its own
    masks = cached_key_masks(caches, retentions, mode, threshold)  # (B, C) per layer
    causal = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).tril()  # among the new tokens
    x = model.embed_tokens(input_ids)  # (B, L, hidden)
    tokens = []
    for layer, cache, retention, keep in zip(model.layers, caches, retentions, masks):
        attn = layer.self_attn
        H, Hkv, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
        h = layer.input_layernorm(x)
        q = apply_rope(attn.q_proj(h).view(B, L, H, D).transpose(1, 2), cos, sin)  # (B, H, L, D)
        k = apply_rope(attn.k_proj(h).view(B, L, Hkv, D).transpose(1, 2), cos, sin)  # (B, Hkv, L, D)
        v = attn.v_proj(h).view(B, L, Hkv, D).transpose(1, 2)
        keys = torch.cat([cache.keys, k], dim=2)  # (B, Hkv, C + L, D)
        values = torch.cat([cache.values, v], dim=2)
        ret = torch.cat([retention, retention.new_ones(B, L)], dim=1)  # new tokens: R = 1
        visible = torch.cat([keep[:, None, :].expand(B, L, -1), causal.expand(B, L, L)], dim=2)  # (B, L, C + L)
        kr, vr = repeat_kv(keys, attn.n_rep), repeat_kv(values, attn.n_rep)  # (B, H, C + L, D)
        scale = 1.0 / math.sqrt(D)
        if mode == "soft_delete":
            scores = soft_delete_scores(q, kr, ret, scale)
        else:
            scores = (q @ kr.transpose(-2, -1)) * scale  # (B, H, L, C + L)
        scores = scores.float().masked_fill(~visible[:, None], -math.inf)
        weights = torch.softmax(scores, dim=-1)  # every row sees at least its own key
        out = (weights.to(vr.dtype) @ vr).transpose(1, 2).reshape(B, L, H * D)  # (B, L, H*D)
        x = x + attn.o_proj(out)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        received = weights.mean(dim=1).amax(dim=1)  # (B, C + L): a_j, heads averaged, max over queries
        cache.reinforce(received[:, :cache.capacity], t)
        cache.append(k, v, t, weights=received[:, -L:] if L > 1 else None)
        tokens.append(visible[:, -1].sum(dim=-1))
    logits = model.lm_head(model.norm(x))
    return logits, dict(retention=retentions, masks=masks, tokens=tokens)
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    B, L = input_ids.shape
    capacity = L + max_new_tokens if capacity is None else capacity
    check_positive_int("capacity", capacity)
    caches = new_retention_caches(model, B, capacity, curve=curve, num_sink=num_sink)
    ids, new = input_ids, input_ids
    memory, retention, sparsity = [], [], []
    begin = time.perf_counter()
    for step in range(max_new_tokens):
        logits, info = retention_forward(model, new, caches, mode, threshold)
        if step > 0:  # decode steps (the prefill has an empty cache)
            memory.append(torch.stack(info["tokens"]).float().mean().item())
            valid = [r > 0 for r in info["retention"]]
            retention.append(sum(r[v].sum().item() for r, v in zip(info["retention"], valid))
                             / max(1, sum(v.sum().item() for v in valid)))
            sparsity.append([1.0 - (m.sum().item() / max(1, v.sum().item()))
                             for m, v in zip(info["masks"], valid)])
        new = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
        ids = torch.cat([ids, new], dim=1)
    seconds = time.perf_counter() - begin
    per_layer = [sum(s[i] for s in sparsity) / len(sparsity) for i in range(len(caches))] if sparsity else \
        [0.0] * len(caches)
    stats = dict(mode=mode, memory_tokens=sum(memory) / len(memory) if memory else float(L),
                 mean_retention=sum(retention) / len(retention) if retention else 1.0,
                 sparsity=sum(per_layer) / len(per_layer), sparsity_per_layer=per_layer,
                 tokens_per_s=B * max_new_tokens / seconds if seconds > 0 else float("inf"),
                 cache_bytes=sum(c.nbytes for c in caches))
    return ids, stats
    ### END SOLUTION


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
        ### BEGIN SOLUTION
        for name, value in (("batch_size", batch_size), ("num_heads", num_heads), ("recent", recent),
                            ("head_dim", head_dim)):
            check_positive_int(name, value)
        if isinstance(num_sink, bool) or not isinstance(num_sink, int) or num_sink < 0:
            raise ValueError(f"num_sink must be an int >= 0, got {num_sink!r}")
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        self.batch_size, self.num_heads, self.head_dim = batch_size, num_heads, head_dim
        self.num_sink, self.recent, self.dtype = num_sink, recent, dtype
        self.max_seq_len = sys.maxsize
        self.device = torch.empty(0, device=device).device
        self.reset()
        ### END SOLUTION

    def update(self, k, v):
        ### BEGIN SOLUTION
        check_cache_update(self, k, v)
        k_all = torch.cat([self.k_sink, self.k_recent, k], dim=2)  # (B, H, held + L, D)
        v_all = torch.cat([self.v_sink, self.v_recent, v], dim=2)
        s = self.num_sink
        k_rest, v_rest = k_all[:, :, s:], v_all[:, :, s:]  # everything but the (first s) sinks
        keep = min(self.recent - 1, k_rest.shape[2])
        self.k_sink, self.v_sink = k_all[:, :, :s].clone(), v_all[:, :, :s].clone()
        self.k_recent = k_rest[:, :, k_rest.shape[2] - keep:].clone()
        self.v_recent = v_rest[:, :, v_rest.shape[2] - keep:].clone()
        self.seq_len += k.shape[2]
        return k_all, v_all
        ### END SOLUTION

    def reset(self):
        ### BEGIN SOLUTION
        empty = torch.zeros(self.batch_size, self.num_heads, 0, self.head_dim, dtype=self.dtype, device=self.device)
        self.k_sink, self.v_sink, self.k_recent, self.v_recent = empty, empty.clone(), empty.clone(), empty.clone()
        self.seq_len = 0
        ### END SOLUTION

    @property
    def nbytes(self):
        return sum(t.nbytes for t in (self.k_sink, self.v_sink, self.k_recent, self.v_recent))


def rerotate(k, from_positions, to_positions, base=10000.0):
    """Keys rotated by RoPE at from_positions -> the same keys rotated at to_positions:
    apply_rope with the angle of (to - from), since R(p') = R(p' - p) R(p) for rotations.
    k (B, H, L, D); positions int (..., L)."""
    ### BEGIN SOLUTION
    delta = torch.as_tensor(to_positions) - torch.as_tensor(from_positions)
    cos, sin = rope_cos_sin(delta, k.shape[-1], base, dtype=torch.float64 if k.dtype == torch.float64 else
                            torch.float32)
    return apply_rope(k, cos, sin)
    ### END SOLUTION
