"""L09 — A Llama/Mistral-shaped decoder built from your own lessons.

    input_ids (B, L)
      -> embed_tokens                                   (B, L, hidden)
      -> num_layers x [ h = x + self_attn(input_layernorm(x))          RoPE inside, L06 heads
                        x = h + mlp(post_attention_layernorm(h)) ]     SwiGLU
      -> norm -> lm_head                                (B, L, vocab)

Every box is an earlier lesson or this one:
- attention: your L01 scaled_dot_product_attention, the L06 head mapping
  (repeat_kv, the q/k/v/o projections of GroupedQueryAttention), L03's causal
  mask (combine_masks with the key padding), L07's sliding_window_mask when the
  config has a window;
- caches: L04's KVCache, or L07's RollingKVCache when the config has a window
  (new_caches); positions: L04's token_positions;
- RoPE and RMSNorm: rope.py, this lesson.

SwiGLU (Shazeer 2020, "GLU variants"): mlp(x) = down_proj(silu(gate_proj(x)) * up_proj(x)),
silu(a) = a * sigmoid(a). The gate goes through the nonlinearity, the up
projection does not: swap them and the model is a different one.

Conventions (tutorial/CONVENTIONS.md):
- parameter names are Hugging Face Llama's, so LlamaForCausalLM.state_dict()
  with its "model." prefix stripped loads with load_state_dict(strict=True);
- attention_mask (B, L_total), 1/True = real token, covers the cached tokens
  and the new ones (Hugging Face's convention);
- positions are absolute and count real tokens only: position = cumsum(mask) - 1,
  so a left-padded row starts at 0; during decoding the new tokens continue from
  the cache's seq_len;
- keys are rotated BEFORE they go into the cache: a cached key keeps the angle
  of the position it was computed at;
- sliding window W: key j is visible from position p iff 0 <= p - j < W, with p
  and j counted in the cache (padding included), as Mistral in Hugging Face.

Given: Decoder.set_attention_backend (the Triton path of the GPU benchmark).
Exercises: DecoderConfig.__post_init__, SwiGLU, DecoderLayer.forward,
RopeAttention.forward, Decoder.__init__/forward/new_caches/from_hf, generate.
"""
import math
import numbers
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import check_positive_int
from .gqa import GroupedQueryAttention, repeat_kv
from .kv_cache import KVCache, token_positions
from .masks import causal_mask, combine_masks
from .rope import RMSNorm, apply_rope, rope_cos_sin
from .scaled_dot_product import scaled_dot_product_attention
from .sliding_window import RollingKVCache, sliding_window_mask


@dataclass
class DecoderConfig:
    """The shape of a decoder (Hugging Face's LlamaConfig / MistralConfig names in brackets).

    vocab_size, hidden_size, intermediate_size (the SwiGLU width), num_layers
    [num_hidden_layers], num_heads [num_attention_heads], num_kv_heads
    [num_key_value_heads]: positive ints; num_heads divides hidden_size, the
    head dim hidden_size // num_heads is even (RoPE pairs), num_kv_heads divides num_heads.
    rope_base [rope_theta] > 0, rms_eps [rms_norm_eps] >= 0;
    sliding_window: None (full causal) or an int >= 1;
    tie_word_embeddings: a bool; True makes lm_head use embed_tokens' weight.
    __post_init__ checks all of it: ValueError/TypeError naming the field and its value.
    """
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rope_base: float = 10000.0
    rms_eps: float = 1e-6
    sliding_window: Optional[int] = None
    tie_word_embeddings: bool = False

    def __post_init__(self):
        ### BEGIN SOLUTION
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            check_positive_int(name, getattr(self, name))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"head_dim = hidden_size // num_heads = {self.hidden_size // self.num_heads} must be "
                             "even: RoPE rotates pairs of dims")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}")
        for name, low in (("rope_base", 0.0), ("rms_eps", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value < low or (name == "rope_base" and value == 0):
                raise ValueError(f"{name} must be a finite real number {'>' if name == 'rope_base' else '>='} 0, "
                                 f"got {value!r}")
        if self.sliding_window is not None:
            check_positive_int("sliding_window", self.sliding_window)
        if not isinstance(self.tie_word_embeddings, bool):
            raise TypeError(f"tie_word_embeddings must be a bool, got {type(self.tie_word_embeddings).__name__}")
        ### END SOLUTION

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads


class SwiGLU(nn.Module):
    """mlp(x) = down_proj(silu(gate_proj(x)) * up_proj(x)); gate_proj, up_proj:
    hidden -> intermediate, down_proj: intermediate -> hidden, all nn.Linear without bias."""

    def __init__(self, hidden_size, intermediate_size):
        super().__init__()
        ### BEGIN SOLUTION
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        ### END SOLUTION

    def forward(self, x):
        ### BEGIN SOLUTION
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, L, I) * (B, L, I) -> (B, L, hidden)
        ### END SOLUTION


class RopeAttention(GroupedQueryAttention):
    """Your L06 GroupedQueryAttention (its q/k/v/o_proj) with RoPE and an optional sliding window.

    forward(x, cos, sin, key_padding_mask=None, cache=None) -> (B, L, hidden):
      q, k, v = the projections split into heads: (B, H, L, D), (B, Hkv, L, D);
      q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)   (cos, sin: the new tokens' angles)
      k, v = cache.update(k, v) if a cache is given              (ROTATED keys go into the cache)
      each query head h attends with key/value head h // n_rep (repeat_kv), bottom-right
      causal (L03 causal_mask(L, Lk)), or sliding_window_mask(L, Lk, window) when
      self.window is set; key_padding_mask (B, >= Lk) bool: its LAST Lk columns are the
      keys attended to (a RollingKVCache returns only the last ones).
    """

    def __init__(self, config):
        super().__init__(config.hidden_size, config.num_heads, config.num_kv_heads, bias=False)
        self.window = config.sliding_window
        self.backend = "reference"

    def forward(self, x, cos, sin, key_padding_mask=None, cache=None):
        ### BEGIN SOLUTION
        B, L, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, L, H, D).transpose(1, 2)  # (B, L, H*D) -> (B, H, L, D)
        k = self.k_proj(x).view(B, L, Hkv, D).transpose(1, 2)  # (B, Hkv, L, D)
        v = self.v_proj(x).view(B, L, Hkv, D).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # rotate to the new tokens' positions
        if cache is not None:
            k, v = cache.update(k, v)  # (B, Hkv, Lk, D): cached keys keep the angles they were rotated with
        Lk = k.shape[-2]
        keys = None if key_padding_mask is None else key_padding_mask[:, -Lk:]  # (B, Lk)
        if self.backend == "triton" and (keys is None or bool(keys.all())):
            from .flash_attention_triton import triton_flash_attention  # CUDA only: imported when asked for
            out = triton_flash_attention(q, k, v, causal=True, window=self.window)  # GQA inside the kernel
        else:
            band = causal_mask(L, Lk, device=x.device) if self.window is None else \
                sliding_window_mask(L, Lk, self.window, device=x.device)  # (L, Lk), bottom-right
            mask = combine_masks(band, None if keys is None else keys[:, None, None, :])  # (B, 1, L, Lk)
            k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # (B, Hkv, Lk, D) -> (B, H, Lk, D)
            out = scaled_dot_product_attention(q, k, v, mask=mask)  # (B, H, L, D); a row with no key gives 0
        return self.o_proj(out.transpose(1, 2).reshape(B, L, H * D))  # (B, H, L, D) -> (B, L, H*D) -> hidden
        ### END SOLUTION


class DecoderLayer(nn.Module):
    """Pre-norm block: h = x + self_attn(input_layernorm(x)); out = h + mlp(post_attention_layernorm(h))."""

    def __init__(self, config):
        super().__init__()
        self.self_attn = RopeAttention(config)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_eps)

    def forward(self, x, cos, sin, key_padding_mask=None, cache=None):
        ### BEGIN SOLUTION
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, key_padding_mask, cache)
        return h + self.mlp(self.post_attention_layernorm(h))
        ### END SOLUTION


class Decoder(nn.Module):
    """Decoder(config): embed_tokens (nn.Embedding(vocab, hidden)), layers (nn.ModuleList of
    DecoderLayer), norm (RMSNorm), lm_head (nn.Linear(hidden, vocab, bias=False)); with
    config.tie_word_embeddings, lm_head.weight IS embed_tokens.weight (one Parameter).
    Hugging Face's names, so Decoder.from_hf loads a Llama/Mistral state dict directly."""

    def __init__(self, config):
        super().__init__()
        ### BEGIN SOLUTION
        if not isinstance(config, DecoderConfig):
            raise TypeError(f"config must be a DecoderConfig, got {type(config).__name__}")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # one Parameter, one storage, two names
        ### END SOLUTION

    def set_attention_backend(self, backend):
        """'reference' (L01 attention with L03/L07 masks, any device) or 'triton'
        (L05's triton_flash_attention on CUDA; rows with padding still take the
        reference path, the kernel has no key padding mask)."""
        if backend not in ("reference", "triton"):
            raise ValueError(f"backend must be 'reference' or 'triton', got {backend!r}")
        for layer in self.layers:
            layer.self_attn.backend = backend
        return self

    def forward(self, input_ids, attention_mask=None, caches=None):
        """input_ids (B, L) long, the NEW tokens -> logits (B, L, vocab_size) in the model's dtype.

        caches: None, or one cache per layer (new_caches) holding the same seq_len;
          the new tokens then sit at positions after the cached ones.
        attention_mask: None (every token real) or (B, seq_len + L), bool or 0/1 ints,
          True/1 = real token, over the cached tokens and the new ones.
        Positions: L04's token_positions(seq_len, L, mask): cumsum(mask) - 1, clamped at 0.
        cos, sin = rope_cos_sin(positions, head_dim, rope_base), angles in float32
        (float64 for a float64 model), once for all layers.
        Errors, all raised before any cache changes: input_ids not a 2-D long tensor
        or ids outside [0, vocab_size) (naming input_ids); caches of the wrong number,
        seq_lens, heads, head_dim, batch, dtype, window or capacity (naming caches);
        attention_mask of another shape or kind (naming attention_mask).
        """
        ### BEGIN SOLUTION
        past = self._check_forward(input_ids, attention_mask, caches)
        B, L = input_ids.shape
        weight = self.embed_tokens.weight
        if L == 0:
            return weight.new_zeros(B, 0, self.config.vocab_size)
        keys = None if attention_mask is None else attention_mask.to(torch.bool)  # (B, past + L)
        positions = token_positions(past, L, keys, device=input_ids.device)  # (1 or B, L): real tokens before
        angle_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_base, dtype=angle_dtype)
        x = self.embed_tokens(input_ids)  # (B, L, hidden)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, keys, None if caches is None else caches[i])
        return self.lm_head(self.norm(x))  # (B, L, vocab)
        ### END SOLUTION

    ### BEGIN SOLUTION
    def _check_forward(self, input_ids, attention_mask, caches):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long or input_ids.dim() != 2:
            got = f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) \
                else type(input_ids).__name__
            raise TypeError(f"input_ids must be a (B, L) long tensor of token ids, got {got}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size}), got values in "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        B, L = input_ids.shape
        past = 0
        if caches is not None:
            if not isinstance(caches, (list, tuple)) or len(caches) != len(self.layers):
                raise ValueError(f"caches must be a list of {len(self.layers)} per-layer caches (new_caches), got "
                                 f"{len(caches) if isinstance(caches, (list, tuple)) else type(caches).__name__}")
            attn = self.layers[0].self_attn
            weight = self.embed_tokens.weight
            past = caches[0].seq_len
            for i, cache in enumerate(caches):
                expected = (B, attn.num_kv_heads, attn.head_dim, weight.dtype, weight.device, past)
                got = (cache.batch_size, cache.num_heads, cache.head_dim, cache.dtype, cache.device, cache.seq_len)
                if got != expected:
                    raise ValueError(f"caches[{i}] holds (batch, kv heads, head_dim, dtype, device, seq_len) = {got}, "
                                     f"expected {expected}: build them with new_caches (num_kv_heads heads)")
                window = getattr(cache, "window", None)
                if window is not None and window != self.config.sliding_window:
                    raise ValueError(f"caches[{i}] is a rolling cache of window {window}, but the model's "
                                     f"sliding_window is {self.config.sliding_window}: it would drop keys the "
                                     "queries must see")
                if window is None and past + L > cache.max_seq_len:
                    raise ValueError(f"caches[{i}] holds {cache.max_seq_len} positions, this call would make it "
                                     f"{past + L} ({past} cached + {L} new)")
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.is_floating_point():
                got = getattr(attention_mask, "dtype", type(attention_mask).__name__)
                raise TypeError(f"attention_mask must be a bool or 0/1 integer tensor (B, L_total), got {got}")
            if tuple(attention_mask.shape) != (B, past + L):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected (B, L_total) = "
                                 f"({B}, {past + L}): {past} cached tokens + {L} new ones")
            if attention_mask.device != input_ids.device:
                raise ValueError(f"attention_mask is on {attention_mask.device}, input_ids on {input_ids.device}")
        return past
    ### END SOLUTION

    def new_caches(self, batch_size, max_seq_len, dtype=None, device=None):
        """One empty cache per layer, for num_kv_heads heads of head_dim: L04's
        KVCache(batch_size, num_kv_heads, max_seq_len, head_dim) or, when the config
        has a sliding window W, L07's RollingKVCache(batch_size, num_kv_heads, W, head_dim)
        (it holds W - 1 entries whatever max_seq_len is). dtype and device default to
        the model's. batch_size, max_seq_len: positive ints (naming them)."""
        ### BEGIN SOLUTION
        check_positive_int("batch_size", batch_size)
        check_positive_int("max_seq_len", max_seq_len)
        weight = self.embed_tokens.weight
        dtype = weight.dtype if dtype is None else dtype
        device = weight.device if device is None else device
        Hkv, D, W = self.config.num_kv_heads, self.config.head_dim, self.config.sliding_window
        if W is None:
            return [KVCache(batch_size, Hkv, max_seq_len, D, dtype=dtype, device=device) for _ in self.layers]
        return [RollingKVCache(batch_size, Hkv, W, D, dtype=dtype, device=device) for _ in self.layers]
        ### END SOLUTION

    @classmethod
    def from_hf(cls, hf_model):
        """A Decoder with the same config and weights as a Hugging Face
        LlamaForCausalLM or MistralForCausalLM (same dtype and device).

        Reads vocab_size, hidden_size, intermediate_size, num_hidden_layers,
        num_attention_heads, num_key_value_heads, rope_parameters["rope_theta"]
        (rope_theta on older configs), rms_norm_eps, sliding_window (None for
        Llama) and tie_word_embeddings from hf_model.config, then loads
        hf_model.state_dict() with the "model." prefix stripped (strict).
        Refuses what this decoder does not implement, with a ValueError naming
        hf_model: biases (attention_bias, mlp_bias), an activation other than
        silu, a head_dim other than hidden_size // num_attention_heads, a RoPE
        scaling type other than "default". TypeError naming hf_model for an
        object without a config and a state_dict.
        """
        ### BEGIN SOLUTION
        hf_config = getattr(hf_model, "config", None)
        if hf_config is None or not callable(getattr(hf_model, "state_dict", None)):
            raise TypeError(f"hf_model must be a Hugging Face LlamaForCausalLM / MistralForCausalLM, "
                            f"got {type(hf_model).__name__}")
        rope = getattr(hf_config, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default")
        rope_base = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        heads, hidden = hf_config.num_attention_heads, hf_config.hidden_size
        unsupported = {
            "attention_bias": bool(getattr(hf_config, "attention_bias", False)),
            "mlp_bias": bool(getattr(hf_config, "mlp_bias", False)),
            f"hidden_act={getattr(hf_config, 'hidden_act', 'silu')!r}": getattr(hf_config, "hidden_act", "silu") != "silu",
            f"head_dim={getattr(hf_config, 'head_dim', None)}":
                getattr(hf_config, "head_dim", None) not in (None, hidden // heads),
            f"rope_type={rope_type!r}": rope_type != "default",
        }
        refused = [name for name, bad in unsupported.items() if bad]
        if refused:
            raise ValueError(f"hf_model uses what this decoder does not implement: {', '.join(refused)}")
        config = DecoderConfig(
            vocab_size=hf_config.vocab_size, hidden_size=hidden, intermediate_size=hf_config.intermediate_size,
            num_layers=hf_config.num_hidden_layers, num_heads=heads,
            num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
            rope_base=float(rope_base), rms_eps=float(hf_config.rms_norm_eps),
            sliding_window=getattr(hf_config, "sliding_window", None),
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)))
        weight = next(hf_model.parameters())
        model = cls(config).to(device=weight.device, dtype=weight.dtype)
        state = {name.removeprefix("model."): tensor for name, tensor in hf_model.state_dict().items()}
        if config.tie_word_embeddings:
            state.setdefault("lm_head.weight", state["embed_tokens.weight"])
        model.load_state_dict(state, strict=True)
        return model.train(hf_model.training)
        ### END SOLUTION


@torch.no_grad()
def generate(model, input_ids, max_new_tokens, attention_mask=None, use_cache=True,
             temperature=0.0, top_k=None, generator=None):
    """Append max_new_tokens tokens to every row of input_ids (B, L) -> (B, L + max_new_tokens).

    Each step takes the logits of the last position, (B, vocab):
      temperature == 0: greedy, argmax (the first index on ties, as torch.argmax);
      temperature > 0: logits / temperature; with top_k, every logit below the
        k-th largest of its row becomes -inf; then one torch.multinomial draw
        from the softmax, with `generator` (a torch.Generator or None).
    use_cache=True: caches = model.new_caches(B, L + max_new_tokens); ONE prefill
      call on the whole prompt, then one call per new token with input_ids (B, 1).
    use_cache=False: every step runs the model on all tokens so far. Same tokens.
    attention_mask: None or (B, L), 1/True = real token (left padding for a batch
      of prompts of different lengths); it grows by one real column per step.
    Runs under torch.no_grad in the model's current mode. Errors: max_new_tokens
    not an int >= 0, temperature not a finite real >= 0, top_k not None or an int
    >= 1, generator not a torch.Generator, use_cache not a bool, input_ids or
    attention_mask of the wrong kind (each naming the argument).
    """
    ### BEGIN SOLUTION
    _check_generate(input_ids, max_new_tokens, attention_mask, use_cache, temperature, top_k, generator)
    B, L = input_ids.shape
    ids = input_ids
    mask = None if attention_mask is None else attention_mask.to(torch.bool)
    caches = model.new_caches(B, L + max_new_tokens) if use_cache and max_new_tokens else None
    new = ids  # what the next call sees: the whole prompt (prefill), then only the last token
    for _ in range(max_new_tokens):
        logits = model(new if use_cache else ids, attention_mask=mask, caches=caches)[:, -1]  # (B, vocab)
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        else:
            logits = logits.float() / temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit of each row
                logits = logits.masked_fill(logits < kth, -math.inf)
            next_id = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
        ids = torch.cat([ids, next_id], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        new = next_id
    return ids
    ### END SOLUTION


### BEGIN SOLUTION
def _check_generate(input_ids, max_new_tokens, attention_mask, use_cache, temperature, top_k, generator):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long or input_ids.dim() != 2:
        raise TypeError("input_ids must be a (B, L) long tensor of token ids")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be a bool, got {type(use_cache).__name__}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite real >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None:
        check_positive_int("top_k", top_k)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.is_floating_point():
            raise TypeError("attention_mask must be a bool or 0/1 integer tensor (B, L)")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected input_ids' shape "
                             f"{tuple(input_ids.shape)}")
### END SOLUTION
