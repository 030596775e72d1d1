"""L04 basic suite: the preallocated KV cache, multi-head attention with and
without it, chunked prefill, left-padded batches, positions after the cache,
and greedy generation that gives the same tokens with and without the cache.

Run: ./course test L04    (or: pytest testcases/L04_kv_cache -m basic)
Expected values come from coursekit.reference: mha_ref / mha_module_ref (float64
einsum attention from the module's own weights, over the WHOLE sequence at
once) and tiny_decoder_ref (the decoder recomputed from its weights).
"""
import math

import pytest
import torch

from coursekit.reference import mha_module_ref, tiny_decoder_ref
from coursekit.testing import assert_close, decode_in_chunks, randn

D_MODEL, HEADS = 24, 3  # head_dim 8: small, and not a power of two in d_model

ALIGNMENT_HINT = (
    "during decoding the Lq new queries are the LAST Lq positions: query i sits at absolute position "
    "i + Lk - Lq and sees keys j <= i + Lk - Lq (bottom-right). A top-left mask (tril with diagonal 0, "
    "or SDPA's is_causal with Lq != Lk) lets a decoding query see only the first keys")


# ----------------------------------------------------------------- helpers --

def make_mha(impl, d_model=D_MODEL, num_heads=HEADS, bias=False, seed=0, device="cpu", dtype=torch.float32):
    """The student's module with seeded weights of unit-variance projections
    (attention is peaked, not uniform, so a wrong key set shows)."""
    mha = impl.kv_cache.MultiHeadAttention(d_model, num_heads, bias=bias)
    with torch.no_grad():
        for i, name in enumerate("qkvo"):
            proj = getattr(mha, f"{name}_proj")
            proj.weight.copy_(randn(d_model, d_model, seed=seed + i) / math.sqrt(d_model))
            if bias:
                proj.bias.copy_(0.5 * randn(d_model, seed=seed + 10 + i))
    return mha.to(device=device, dtype=dtype)


def make_decoder(impl, seed=0, dtype=torch.float32, device="cpu"):
    torch.manual_seed(seed)
    model = impl.kv_cache.TinyDecoder(vocab_size=50, d_model=32, num_heads=4, num_layers=2, max_positions=64)
    return model.to(device=device, dtype=dtype).eval()


def reference_greedy(model, prompt, steps):
    """Greedy tokens from tiny_decoder_ref: the whole sequence recomputed at every step, in float64."""
    ids = prompt
    for _ in range(steps):
        next_id = tiny_decoder_ref(model, ids)[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


# ----------------------------------------------------------------- KVCache --

def test_cache_allocates_its_buffers_up_front(impl, device):
    # A view of a preallocated buffer carries the whole buffer's storage: after
    # one token, k_all must already sit in room for max_seq_len positions.
    cache = impl.kv_cache.KVCache(2, 3, 10, 4, device=device)
    assert cache.seq_len == 0, f"a new cache holds nothing: seq_len should be 0, got {cache.seq_len}"
    k_all, v_all = cache.update(randn(2, 3, 1, 4, seed=1, device=device), randn(2, 3, 1, 4, seed=2, device=device))
    room = 2 * 3 * 10 * 4 * 4  # B * H * max_seq_len * D float32 elements of 4 bytes
    for name, view in (("k_all", k_all), ("v_all", v_all)):
        assert view.dtype == torch.float32 and view.device.type == device, (
            f"{name} is {view.dtype} on {view.device}, expected float32 on {device}")
        assert view.untyped_storage().nbytes() >= room, (
            f"{name} lives in {view.untyped_storage().nbytes()} bytes of storage, less than the "
            f"{room} bytes of a (B, H, max_seq_len, D) = (2, 3, 10, 4) buffer: allocate the full "
            "buffers once, in __init__, and return views of them")


def test_update_returns_everything_written_so_far(impl, device):
    cache = impl.kv_cache.KVCache(2, 3, 9, 4, device=device)
    written_k, written_v = [], []
    for step, n in enumerate([3, 1, 2, 1]):
        k = randn(2, 3, n, 4, seed=10 + step, device=device)
        v = randn(2, 3, n, 4, seed=20 + step, device=device)
        written_k.append(k)
        written_v.append(v)
        k_all, v_all = cache.update(k, v)
        total = sum(t.shape[2] for t in written_k)
        assert cache.seq_len == total, (
            f"after writing {total} positions seq_len is {cache.seq_len}: update must advance seq_len by L_new")
        assert_close(k_all, torch.cat(written_k, dim=2), what=f"k_all after update {step}", hint=(
            "k_all should be every key written so far, in order: write the new keys at positions "
            "[seq_len, seq_len + L_new) and return the buffer's slice [:, :, :seq_len] (did you swap k and v, "
            "or write at the wrong offset?)"))
        assert_close(v_all, torch.cat(written_v, dim=2), what=f"v_all after update {step}",
                     hint="v_all should be every value written so far, in order (k and v swapped?)")


def test_update_writes_in_place_and_returns_views(impl, device):
    cache = impl.kv_cache.KVCache(1, 2, 12, 8, device=device)
    k1, v1 = cache.update(randn(1, 2, 5, 8, seed=30, device=device), randn(1, 2, 5, 8, seed=31, device=device))
    first_k, first_v = k1.clone(), v1.clone()
    k2, v2 = cache.update(randn(1, 2, 1, 8, seed=32, device=device), randn(1, 2, 1, 8, seed=33, device=device))
    k3, v3 = cache.update(randn(1, 2, 2, 8, seed=34, device=device), randn(1, 2, 2, 8, seed=35, device=device))
    for name, views in (("k_all", (k1, k2, k3)), ("v_all", (v1, v2, v3))):
        pointers = [t.data_ptr() for t in views]
        assert len(set(pointers)) == 1, (
            f"{name} starts at a different address after each update ({pointers}): the cache reallocates. "
            "Preallocate the buffers in __init__, write new entries in place (self.k_cache[:, :, a:b] = k) "
            "and return slices of the buffer: no torch.cat, no new tensors")
        full_buffer = 2 * 12 * 8 * views[0].element_size()
        assert views[0].untyped_storage().nbytes() >= full_buffer, (
            f"{name} lives in a storage of {views[0].untyped_storage().nbytes()} bytes, but the buffer for "
            f"max_seq_len=12 needs {full_buffer}: return a view of the preallocated buffer, not a copy")
    assert_close(k1, first_k, what="the first k_all after two more updates",
                 hint="later updates write to later positions; the positions already filled must not move")
    assert_close(v1, first_v, what="the first v_all after two more updates")


def test_overflow_raises_and_leaves_the_cache_unchanged(impl):
    cache = impl.kv_cache.KVCache(1, 1, 6, 4)
    k = randn(1, 1, 4, 4, seed=40)
    v = randn(1, 1, 4, 4, seed=41)
    cache.update(k, v)
    with pytest.raises(ValueError) as info:
        cache.update(randn(1, 1, 3, 4, seed=42), randn(1, 1, 3, 4, seed=43))
    message = str(info.value)
    assert any(name in message for name in ("max_seq_len", "cache", "k", "6")), (
        f"the overflow error should say what does not fit: the cache's capacity (max_seq_len=6) or the "
        f"update k that overflows it, got: {message!r}")
    assert cache.seq_len == 4, (
        f"a rejected update must leave the cache as it was: seq_len is {cache.seq_len}, expected 4. "
        "Check the capacity before writing anything or advancing seq_len")
    k_new, v_new = randn(1, 1, 2, 4, seed=44), randn(1, 1, 2, 4, seed=45)
    k_all, v_all = cache.update(k_new, v_new)
    assert_close(k_all, torch.cat([k, k_new], dim=2), what="k_all after a rejected update",
                 hint="the rejected update must not have written anything")
    assert_close(v_all, torch.cat([v, v_new], dim=2), what="v_all after a rejected update")


def test_reset_starts_over_in_the_same_memory(impl, device):
    cache = impl.kv_cache.KVCache(2, 2, 8, 4, device=device)
    k_before, _ = cache.update(randn(2, 2, 5, 4, seed=50, device=device), randn(2, 2, 5, 4, seed=51, device=device))
    pointer = k_before.data_ptr()
    cache.reset()
    assert cache.seq_len == 0, f"after reset() seq_len should be 0, got {cache.seq_len}"
    k, v = randn(2, 2, 2, 4, seed=52, device=device), randn(2, 2, 2, 4, seed=53, device=device)
    k_all, v_all = cache.update(k, v)
    assert k_all.shape == (2, 2, 2, 4), (
        f"after reset() and one update of 2 positions, k_all has shape {tuple(k_all.shape)}, expected (2, 2, 2, 4): "
        "reset must forget the old positions")
    assert_close(k_all, k, what="k_all after reset", hint="the next update after reset writes at position 0")
    assert_close(v_all, v, what="v_all after reset")
    assert k_all.data_ptr() == pointer, (
        "after reset() the cache lives at a new address: reset should only rewind seq_len and reuse the "
        "buffers (reallocating on every new sequence is what the cache is meant to avoid)")


# ------------------------------------------------------ MultiHeadAttention --

def test_mha_has_four_projections_and_splits_heads(impl):
    mha = impl.kv_cache.MultiHeadAttention(D_MODEL, HEADS)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        proj = getattr(mha, name)
        assert isinstance(proj, torch.nn.Linear), f"{name} should be an nn.Linear, got {type(proj).__name__}"
        assert tuple(proj.weight.shape) == (D_MODEL, D_MODEL), f"{name}.weight should be (d_model, d_model)"
        assert proj.bias is None, f"{name} has a bias, but bias=False was asked for"
    assert (mha.num_heads, mha.head_dim) == (HEADS, D_MODEL // HEADS), (
        f"num_heads, head_dim = {mha.num_heads}, {mha.head_dim}; expected {HEADS}, {D_MODEL // HEADS}")
    with_bias = impl.kv_cache.MultiHeadAttention(D_MODEL, HEADS, bias=True)
    assert with_bias.q_proj.bias is not None, "bias=True should give the projections a bias"


PADDING = {
    "none": None,
    "left": [[True] * 7, [False, False, False, True, True, True, True]],
    "right": [[True] * 7, [True, True, True, True, True, False, False]],
}


@pytest.mark.parametrize("padding", PADDING, ids=list(PADDING))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_mha_without_cache_matches_reference(impl, device, causal, padding):
    mha = make_mha(impl, seed=1, device=device)
    x = randn(2, 7, D_MODEL, seed=60, device=device)
    keep = None if PADDING[padding] is None else torch.tensor(PADDING[padding], device=device)
    out = mha(x, key_padding_mask=keep, causal=causal)
    assert out.shape == x.shape, f"output shape {tuple(out.shape)}, expected (B, L, d_model) = {tuple(x.shape)}"
    assert_close(out, mha_module_ref(mha, x, causal=causal, key_padding_mask=keep), hint=(
        "project, split heads with view(B, L, H, D).transpose(1, 2) (not view(B, H, L, D)), attend, merge "
        "back with transpose(1, 2).reshape(B, L, d_model), then o_proj. key_padding_mask is True for real "
        "tokens; AND it with the causal mask; a query with no visible key gives 0"))


def test_prefill_then_one_token_at_a_time_equals_full_forward(impl, device):
    mha = make_mha(impl, seed=2, device=device)
    x = randn(2, 11, D_MODEL, seed=61, device=device)
    expected = mha_module_ref(mha, x, causal=True)
    cache = impl.kv_cache.KVCache(2, HEADS, 16, D_MODEL // HEADS, device=device)
    prefill = mha(x[:, :5], cache=cache)
    assert_close(prefill, expected[:, :5], what="prefill output (5 tokens into an empty cache)",
                 hint="with an empty cache the prefill is ordinary causal attention over the prompt")
    for t in range(5, 11):
        out = mha(x[:, t:t + 1], cache=cache)
        assert cache.seq_len == t + 1, f"after decoding position {t} the cache should hold {t + 1}, got {cache.seq_len}"
        assert_close(out, expected[:, t:t + 1], what=f"decoding step at position {t} (Lq=1, Lk={t + 1})",
                     hint=ALIGNMENT_HINT + "; and the new k, v must go through cache.update before attending")


def test_chunked_prefill_with_uneven_chunks(impl, device):
    mha = make_mha(impl, seed=3, device=device)
    x = randn(2, 13, D_MODEL, seed=62, device=device)
    cache = impl.kv_cache.KVCache(2, HEADS, 13, D_MODEL // HEADS, device=device)
    out = decode_in_chunks(mha, x, [4, 1, 3, 2, 3], cache)
    assert_close(out, mha_module_ref(mha, x, causal=True), hint=(
        "chunks of several tokens after a filled cache need the causal mask WITHIN the chunk too, aligned "
        "bottom-right: causal_mask(Lq, Lk) with Lk = cache.seq_len after the update. " + ALIGNMENT_HINT))


def test_left_padded_batch_decodes_like_each_row_alone(impl, device):
    # Prompts of 6, 3 and 4 real tokens, left-padded to 6, then 4 decoding steps.
    mha = make_mha(impl, seed=4, device=device)
    lengths, prompt, steps = [6, 3, 4], 6, 4
    x = randn(3, prompt + steps, D_MODEL, seed=63, device=device)
    keep = torch.ones(3, prompt + steps, dtype=torch.bool, device=device)
    for b, n in enumerate(lengths):
        keep[b, :prompt - n] = False
    cache = impl.kv_cache.KVCache(3, HEADS, prompt + steps, D_MODEL // HEADS, device=device)
    out = decode_in_chunks(mha, x, [prompt] + [1] * steps, cache, key_padding_mask=keep)
    for b, n in enumerate(lengths):
        pad = prompt - n
        alone = mha_module_ref(mha, x[b:b + 1, pad:], causal=True)  # the row without its padding
        assert_close(out[b:b + 1, pad:], alone, what=f"row {b} ({pad} padding tokens on the left)", hint=(
            "key_padding_mask covers ALL keys attended to, the cached ones included: at every step pass the "
            "mask of length Lk = cache.seq_len + L_new, and AND it with the causal mask"))
        assert_close(out[b, :pad], torch.zeros(pad, D_MODEL), what=f"row {b}: outputs at its padding positions",
                     hint="a left-padding query sees only padding keys: fully masked, so its output is 0")


# ---------------------------------------------------- positions, generation --

def test_token_positions_continue_after_the_cache(impl):
    cases = {(0, 4): [[0, 1, 2, 3]], (7, 1): [[7]], (5, 3): [[5, 6, 7]]}
    for (past, new), expected in cases.items():
        got = impl.kv_cache.token_positions(past, new)
        assert got.dtype == torch.long, f"positions should be long (embedding indices), got {got.dtype}"
        assert got.tolist() == expected, (
            f"token_positions({past}, {new}) = {got.tolist()}, expected {expected}: the new tokens follow the "
            f"{past} cached ones, so decoding step t is position t (not 0)")


def test_token_positions_skip_left_padding(impl):
    keep = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])
    got = impl.kv_cache.token_positions(0, 5, keep)
    assert tuple(got.shape) == (2, 5), f"with a mask the positions are per row, (B, new_len); got {tuple(got.shape)}"
    assert got[0, 2:].tolist() == [0, 1, 2] and got[1].tolist() == [0, 1, 2, 3, 4], (
        f"token_positions(0, 5, mask) = {got.tolist()}: a row's first REAL token is position 0, so left padding "
        "does not shift its positions (cumulative count of real tokens, minus one)")
    got = impl.kv_cache.token_positions(3, 2, keep)
    assert got.tolist() == [[1, 2], [3, 4]], (
        f"token_positions(3, 2, mask) = {got.tolist()}, expected [[1, 2], [3, 4]]: count the real tokens among "
        "ALL keys (the mask covers the cached ones too), then keep the last new_len")


def test_decoder_with_cache_gives_the_full_forward_logits(impl):
    model = make_decoder(impl, seed=5)
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(64))
    expected = tiny_decoder_ref(model, ids)
    with torch.no_grad():
        assert_close(model(ids), expected, what="logits without a cache",
                     hint="the decoder is given code: check MultiHeadAttention first")
        caches = model.new_caches(2, 12)
        logits = [model(ids[:, :5], caches=caches)] + [model(ids[:, t:t + 1], caches=caches) for t in range(5, 12)]
    assert_close(torch.cat(logits, dim=1), expected, what="logits of prefill + decoding with the cache", hint=(
        "each layer has its own cache; the new tokens' positions start at caches[0].seq_len "
        "(token_positions(past_len, new_len)), not at 0"))


def test_greedy_generate_gives_the_same_tokens_with_and_without_cache(impl):
    model = make_decoder(impl, seed=6)
    prompt = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(65))
    cached = impl.kv_cache.greedy_generate(model, prompt, 20, use_cache=True)
    uncached = impl.kv_cache.greedy_generate(model, prompt, 20, use_cache=False)
    assert tuple(cached.shape) == (2, 25), (
        f"output shape {tuple(cached.shape)}, expected (B, P + max_new_tokens) = (2, 25)")
    assert torch.equal(cached[:, :5], prompt), "the output starts with the prompt"
    assert torch.equal(cached, uncached), (
        f"greedy tokens differ with and without the cache:\n  cached:   {cached[:, 5:].tolist()}\n"
        f"  uncached: {uncached[:, 5:].tolist()}\n  hint: prefill the whole prompt once, then feed ONLY the "
        "token just chosen (B, 1) to the cached model; without the cache feed everything so far")
    model64 = make_decoder(impl, seed=6, dtype=torch.float64)  # float64: no near-ties between logits
    got = impl.kv_cache.greedy_generate(model64, prompt, 12, use_cache=True)
    want = reference_greedy(model64, prompt, 12)
    assert torch.equal(got, want), (
        f"greedy tokens differ from argmax decoding of the reference logits:\n  got:      {got[:, 5:].tolist()}\n"
        f"  expected: {want[:, 5:].tolist()}\n  hint: pick argmax of the LAST position's logits at every step")


def test_left_padded_generation_matches_each_prompt_alone(impl):
    model = make_decoder(impl, seed=7, dtype=torch.float64)
    gen = torch.Generator().manual_seed(66)
    long_prompt, short_prompt = torch.randint(0, 50, (1, 6), generator=gen), torch.randint(0, 50, (1, 3), generator=gen)
    batch = torch.cat([long_prompt, torch.cat([torch.zeros(1, 3, dtype=torch.long), short_prompt], dim=1)])
    keep = torch.tensor([[True] * 6, [False, False, False, True, True, True]])
    out = impl.kv_cache.greedy_generate(model, batch, 8, use_cache=True, prompt_mask=keep)
    for row, prompt in enumerate((long_prompt, short_prompt)):
        alone = impl.kv_cache.greedy_generate(model, prompt, 8, use_cache=True)
        assert torch.equal(out[row, 6:], alone[0, prompt.shape[1]:]), (
            f"row {row} of a left-padded batch generates {out[row, 6:].tolist()}, but alone its prompt "
            f"generates {alone[0, prompt.shape[1]:].tolist()}. hint: extend the mask by one True column per "
            "generated token and pass it (over all keys) at every step")
