"""L11 — A continuous-batching engine: many requests, one paged cache, one decoder.

A server receives requests of different lengths at different times. Static
batching waits for a batch, runs it until its LONGEST request finishes, and
leaves finished rows idle meanwhile. Continuous batching (Orca, Yu et al.
2022; vLLM) decides again at every step: finished requests leave the batch and
free their blocks at once, waiting requests join as soon as there is room.

    add_request(prompt, n) --> waiting ----(room in batch and cache)----> running --(n tokens)--> finished
                                  ^                                          |
                                  +------------ preempted (cache full) <-----+

One engine step is either
- a PREFILL of one waiting request: its whole context (prompt, plus any tokens
  it had generated before a preemption) runs through the decoder, its keys and
  values are written into freshly allocated blocks, and the last position's
  logits give its next token; or
- a DECODE of every running request: one new token each, batched, every
  sequence at its own position, attention read through the block tables
  (paged_attention).
Prefills go first (a new request's first token is what a user waits for),
one per step, while the batch has room.

When a decode step finds no free block for some sequence, the engine preempts
the request admitted last: its blocks are freed and it goes back to the front
of the waiting queue, to be recomputed (a new prefill over prompt + generated
tokens) when blocks free up. Recomputation instead of swapping to CPU memory
is vLLM's default for small models: a prefill is cheap compared with copying.
Greedy decoding is deterministic, so a preempted request still produces
exactly the tokens it would have produced alone.

The engine runs the decoder's own modules (L09, Hugging Face names:
embed_tokens, layers[i].input_layernorm / self_attn.{q,k,v,o}_proj /
post_attention_layernorm / mlp, norm, lm_head) with RoPE from rope.py, L01
attention for a prefill, and paged_attention for a decode. Full attention
only (a sliding-window model needs a windowed paged kernel: an exercise).

Exercises: Engine.step (_prefill and _decode); given: the queue handling,
add_request, run, and the timeline kept for the notebook.
"""
import itertools
import math
import numbers
from collections import deque
from dataclasses import dataclass, field

import torch

from .gqa import repeat_kv
from .masks import causal_mask
from .paged_kv_cache import PagedKVCache, paged_attention
from .rope import apply_rope, rope_cos_sin
from .scaled_dot_product import scaled_dot_product_attention


@dataclass
class Request:
    id: int
    prompt: list          # token ids
    max_new_tokens: int
    output: list = field(default_factory=list)   # generated token ids
    holds_blocks: bool = False                    # has cache blocks (between prefill and finish/preemption)

    @property
    def context(self):
        """Every token the model has seen or produced for this request."""
        return self.prompt + self.output

    @property
    def done(self):
        return len(self.output) >= self.max_new_tokens


class Engine:
    """Engine(model, cache, max_batch_size): greedy generation for many requests at once.

    model: an L09 Decoder (eval mode; no sliding window); cache: a PagedKVCache
    with the model's num_layers, num_kv_heads and head_dim; max_batch_size:
    how many requests decode together. A request's id (from add_request) is
    its sequence id in the cache. Each request's tokens equal L09's
    generate(model, prompt[None], max_new_tokens) run alone.
    """

    def __init__(self, model, cache, max_batch_size):
        if not isinstance(cache, PagedKVCache):
            raise TypeError(f"cache must be a PagedKVCache, got {type(cache).__name__}")
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, numbers.Integral) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        config = model.config
        if getattr(config, "sliding_window", None) is not None:
            raise ValueError("the engine serves full-attention models; model.config.sliding_window is set")
        expected = (config.num_layers, config.num_kv_heads, config.hidden_size // config.num_heads)
        got = (cache.num_layers, cache.num_kv_heads, cache.head_dim)
        if expected != got:
            raise ValueError(f"cache has (num_layers, num_kv_heads, head_dim) = {got}, the model needs {expected}")
        self.model, self.cache, self.max_batch_size = model, cache, max_batch_size
        self.waiting, self.running, self.finished = deque(), [], {}
        self._ids = itertools.count()
        self.timeline = []      # one (kind, [request ids]) per step: what ran
        self.preemptions = 0

    def add_request(self, prompt_ids, max_new_tokens):
        """Queue a request; returns its id. prompt_ids: 1-D ints (list or tensor), at least one token."""
        prompt = prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else list(prompt_ids)
        if not prompt or not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in prompt):
            raise ValueError(f"prompt_ids must be a non-empty 1-D sequence of token ids, got {prompt_ids!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        blocks = math.ceil((len(prompt) + max_new_tokens) / self.cache.block_size)
        if blocks > self.cache.num_blocks:
            raise ValueError(f"a request of {len(prompt)} + {max_new_tokens} tokens needs {blocks} blocks; the pool "
                             f"has {self.cache.num_blocks} in all")
        request = Request(next(self._ids), prompt, max_new_tokens)
        self.waiting.append(request)
        return request.id

    @property
    def has_work(self):
        return bool(self.waiting or self.running)

    @torch.no_grad()
    def step(self):
        """One scheduling decision: prefill one waiting request if it fits, else decode the batch."""
        ### BEGIN SOLUTION
        while self.waiting and self.waiting[0].done:             # max_new_tokens = 0: nothing to run
            self._finish(self.waiting.popleft())
        if self.waiting and len(self.running) < self.max_batch_size:
            request = self.waiting[0]
            needed = math.ceil((len(request.context) + 1) / self.cache.block_size)   # its context + one token
            if needed <= self.cache.num_free_blocks:
                self.waiting.popleft()
                self._prefill(request)
                self.timeline.append(("prefill", [request.id]))
                return
        if self.running:
            ids = [r.id for r in self.running]
            self._decode()
            self.timeline.append(("decode", ids))
        elif self.waiting:                                        # nothing runs and the next request cannot start
            raise MemoryError(
                f"no request is running, yet request {self.waiting[0].id} does not fit in the "
                f"{self.cache.num_free_blocks} free blocks of the pool: blocks were not returned")
        ### END SOLUTION

    def run(self):
        """Step until every request is finished; {request_id: 1-D long tensor of prompt + generated ids}."""
        while self.has_work:
            self.step()
        return {rid: torch.tensor(r.context, dtype=torch.long) for rid, r in sorted(self.finished.items())}

    # ------------------------------------------------------------------ steps --

    def _prefill(self, request):
        """Run the request's whole context, write its keys and values, take its next token."""
        ### BEGIN SOLUTION
        tokens = torch.tensor(request.context, dtype=torch.long, device=self._device)[None]   # (1, n)
        n = tokens.shape[1]
        slots = self.cache.allocate(request.id, n)                                         # (n,)
        request.holds_blocks = True
        positions = torch.arange(n, device=self._device)[None]                            # (1, n)

        def attend(layer_index, q, k, v):
            # q (1, H, n, D), k/v (1, Hkv, n, D): store the rotated keys, then causal attention over the prompt
            self.cache.write(layer_index, slots, k[0].transpose(0, 1), v[0].transpose(0, 1))   # (n, Hkv, D)
            n_rep = q.shape[1] // k.shape[1]
            return scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep),
                                                mask=causal_mask(n, n, device=q.device))

        logits = self._forward(tokens, positions, attend)                                  # (1, n, vocab)
        request.output.append(int(logits[0, -1].argmax()))
        self._after_token(request, new=True)
        ### END SOLUTION

    def _decode(self):
        """One token for every running request, batched; preempt when the pool is full."""
        ### BEGIN SOLUTION
        batch = []
        for request in list(self.running):
            if request not in self.running:                                       # preempted for an earlier one
                continue
            while True:
                try:
                    slot = self.cache.allocate(request.id, 1)                     # room for the token fed now
                    batch.append((request, slot))
                    break
                except MemoryError:
                    victim = self.running[-1]                                     # the request admitted last
                    self._preempt(victim)
                    batch = [(r, s) for r, s in batch if r is not victim]
                    if victim is request:
                        break
        if not batch:
            return
        requests = [r for r, _ in batch]
        slots = torch.cat([s for _, s in batch])                                  # (S,)
        ids = [r.id for r in requests]
        tables, lens = self.cache.block_tables(ids), self.cache.seq_lens(ids)      # lens include the new token
        tokens = torch.tensor([[r.context[-1]] for r in requests], device=self._device)   # (S, 1)
        positions = (lens.to(torch.long) - 1)[:, None].to(self._device)             # (S, 1): its position

        def attend(layer_index, q, k, v):
            # q (S, H, 1, D), k/v (S, Hkv, 1, D): store this token's key/value, then read every cached one
            self.cache.write(layer_index, slots, k[:, :, 0], v[:, :, 0])
            out = paged_attention(q[:, :, 0], self.cache.k_pages[layer_index], self.cache.v_pages[layer_index],
                                  tables, lens)                                   # (S, H, D)
            return out[:, :, None]

        logits = self._forward(tokens, positions, attend)                         # (S, 1, vocab)
        for request, token in zip(requests, logits[:, -1].argmax(dim=-1).tolist()):
            request.output.append(token)
            self._after_token(request, new=False)
        ### END SOLUTION

    def _forward(self, tokens, positions, attend):
        """The decoder's layers on tokens (B, L) at positions (B, L); attention by attend(i, q, k, v) (given)."""
        model, config = self.model, self.model.config
        H, Hkv = config.num_heads, config.num_kv_heads
        D = config.hidden_size // H
        B, L = tokens.shape
        weight = model.embed_tokens.weight
        angle_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        cos, sin = rope_cos_sin(positions, D, config.rope_base, dtype=angle_dtype)   # (B, L, D)
        cos, sin = cos[:, None], sin[:, None]                                      # (B, 1, L, D): over heads
        x = model.embed_tokens(tokens)                                             # (B, L, hidden)
        for i, layer in enumerate(model.layers):
            attn, h = layer.self_attn, layer.input_layernorm(x)
            q = attn.q_proj(h).view(B, L, H, D).transpose(1, 2)                    # (B, H, L, D)
            k = attn.k_proj(h).view(B, L, Hkv, D).transpose(1, 2)                  # (B, Hkv, L, D)
            v = attn.v_proj(h).view(B, L, Hkv, D).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            out = attend(i, q, k, v)                                               # (B, H, L, D)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(B, L, H * D))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return model.lm_head(model.norm(x))

    # -------------------------------------------------------- queue handling --

    @property
    def _device(self):
        return self.model.embed_tokens.weight.device

    def _after_token(self, request, new):
        if request.done:
            if not new:
                self.running.remove(request)
            self._finish(request)
        elif new:
            self.running.append(request)

    def _finish(self, request):
        if request.holds_blocks:                                  # its blocks return to the pool at once
            self.cache.free(request.id)
            request.holds_blocks = False
        self.finished[request.id] = request

    def _preempt(self, request):
        """Free a running request's blocks and queue it first, to be recomputed later."""
        self.running.remove(request)
        self.cache.free(request.id)
        request.holds_blocks = False
        self.waiting.appendleft(request)
        self.preemptions += 1
        self.timeline.append(("preempt", [request.id]))
