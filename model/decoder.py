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
        raise NotImplementedError("L09: implement DecoderConfig.__post_init__ in model/decoder.py (see tutorial/L09_rope_decoder/README.md)")

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads


class SwiGLU(nn.Module):
    """mlp(x) = down_proj(silu(gate_proj(x)) * up_proj(x)); gate_proj, up_proj:
    hidden -> intermediate, down_proj: intermediate -> hidden, all nn.Linear without bias."""

    def __init__(self, hidden_size, intermediate_size):
        super().__init__()
        raise NotImplementedError("L09: implement SwiGLU.__init__ in model/decoder.py (see tutorial/L09_rope_decoder/README.md)")

    def forward(self, x):
        raise NotImplementedError("L09: implement SwiGLU.forward in model/decoder.py (see tutorial/L09_rope_decoder/README.md)")


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
        raise NotImplementedError("L09: implement RopeAttention.forward in model/decoder.py (see tutorial/L09_rope_decoder/README.md)")


class DecoderLayer(nn.Module):
    """Pre-norm block: h = x + self_attn(input_layernorm(x)); out = h + mlp(post_attention_layernorm(h))."""

    def __init__(self, config):
        super().__init__()
        self.self_attn = RopeAttention(config)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_eps)

    def forward(self, x, cos, sin, key_padding_mask=None, cache=None):
        raise NotImplementedError("L09: implement DecoderLayer.forward in model/decoder.py (see tutorial/L09_rope_decoder/README.md)")


class Decoder(nn.Module):
    """Decoder(config): embed_tokens (nn.Embedding(vocab, hidden)), layers (nn.ModuleList of
    DecoderLayer), norm (RMSNorm), lm_head (nn.Linear(hidden, vocab, bias=False)); with
    config.tie_word_embeddings, lm_head.weight IS embed_tokens.weight (one Parameter).
    Hugging Face's names, so Decoder.from_hf loads a Llama/Mistral state dict directly."""

    def __init__(self, config):
        super().__init__()
        raise NotImplementedError("L09: implement Decoder.__init__ in model/decoder.py (see tutorial/L09_rope_decoder/README.md)")

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
        raise NotImplementedError("L09: implement Decoder.forward in model/decoder.py (see tutorial/L09_rope_decoder/README.md)")

    def new_caches(self, batch_size, max_seq_len, dtype=None, device=None):
        """One empty cache per layer, for num_kv_heads heads of head_dim: L04's
        KVCache(batch_size, num_kv_heads, max_seq_len, head_dim) or, when the config
        has a sliding window W, L07's RollingKVCache(batch_size, num_kv_heads, W, head_dim)
        (it holds W - 1 entries whatever max_seq_len is). dtype and device default to
        the model's. batch_size, max_seq_len: positive ints (naming them)."""
        raise NotImplementedError("L09: implement Decoder.new_caches in model/decoder.py (see tutorial/L09_rope_decoder/README.md)")

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
        raise NotImplementedError("L09: implement Decoder.from_hf in model/decoder.py (see tutorial/L09_rope_decoder/README.md)")


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
    raise NotImplementedError("L09: implement generate in model/decoder.py (see tutorial/L09_rope_decoder/README.md)")


