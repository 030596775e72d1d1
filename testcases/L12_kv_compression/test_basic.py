"""L12 basic suite: min-max quantization (error within scale / 2 per element,
asymmetric statistics, packed codes in the documented order, constant groups,
nbytes exact), the quantized KV cache (KIVI grouping: keys per channel, values
per token, checked on keys with an outlier channel; the residual window exact;
decoding on the L09 decoder close to the float cache), retention on its
forgetting curve, soft deletion by log-retention, per-layer sparse masks,
eviction that frees slots, attention sinks with RoPE, and bad input.

Run: ./course test L12    (or: pytest testcases/L12_kv_compression -m basic)
Expected values come from coursekit.reference: minmax_groups_ref (min-max
quantization from torch primitives), decoder_visible_ref (the decoder in float64
with a given visible set), attention from torch.softmax, and the L09 decoder
under test for the float-cache baseline. The decoder tests run your L09
Decoder (and through it your L01-L07 modules): finish L09 first.
"""
import math

import pytest
import torch

from coursekit.reference import (decode_attention_ref, decoder_visible_ref, dequantize_codes_ref, minmax_groups_ref,
                                 pack_codes_ref, random_codes_ref, rope_rotate_ref)
from coursekit.testing import assert_close, assert_never_materialises, assert_rejects, randn
from coursekit.training import make_model

pytestmark = pytest.mark.basic

GROUP_HINT = ("asymmetric min-max: zero = min of the group, scale = (max - min) / (2^bits - 1), "
              "code = round((x - min) / scale); a symmetric grid (+-absmax) wastes levels on data not centred on 0")
KIVI_HINT = ("keys are quantized PER CHANNEL (groups along the tokens, dim=-2), values PER TOKEN (groups along "
             "the channels, dim=-1): an outlier key channel then spoils only itself")
RESIDUAL_HINT = ("the last n - n_q tokens, n_q = max(0, (n - residual) // G) * G, are held exactly; the older ones "
                 "are quantized in key groups [0, G), [G, 2G), ...")


def outlier_keys(B=1, H=2, T=40, D=8, seed=0):
    k = randn(B, H, T, D, seed=seed)
    k[..., 3] = 40.0 + k[..., 3]  # an outlier channel, as RoPE's low-frequency pairs give real keys
    return k


# -------------------------------------------------------------- quantize --

CASES = [(bits, dim, g) for bits in (8, 4, 2) for dim, g in ((-1, None), (-1, 4), (-2, None), (-2, 5), (0, 2))]


@pytest.mark.parametrize("bits,dim,group_size", CASES)
def test_round_trip_error_within_half_a_step(impl, bits, dim, group_size):
    x = randn(3, 4, 13, 12, seed=bits) * 2 + 3  # not centred on 0
    qx = impl.kv_quant.quantize(x, bits, dim, group_size)
    got = impl.kv_quant.dequantize(qx)
    assert got.shape == x.shape and got.dtype == x.dtype, f"dequantize gave {got.dtype} {tuple(got.shape)}"
    want, scale = minmax_groups_ref(x, bits, dim, group_size)
    err = (got.double() - x.double()).abs()
    bound = scale / 2 + 1e-6 * (1 + x.double().abs())
    assert bool((err <= bound).all()), (
        f"quantize(bits={bits}, dim={dim}, group_size={group_size}): error {float(err.max()):.4g} exceeds scale/2 "
        f"(max allowed {float(bound.max()):.4g}). {GROUP_HINT}")
    off = (got.double() - want).abs() > scale * 1.001 + 1e-6
    assert not bool(off.any()), f"{int(off.sum())} elements are more than one code away from the reference. {GROUP_HINT}"


@pytest.mark.parametrize("bits", (8, 4, 2))
def test_scale_and_zero_are_the_group_range(impl, bits):
    x = randn(2, 6, 10, seed=1) + 5
    qx = impl.kv_quant.quantize(x, bits, -1, 5)
    groups = x.view(2, 6, 2, 5)
    assert_close(qx.zero.float(), groups.amin(-1), what="zero points", hint=GROUP_HINT)
    assert_close(qx.scale.float(), (groups.amax(-1) - groups.amin(-1)) / (2 ** bits - 1), what="scales",
                 hint=GROUP_HINT)


@pytest.mark.parametrize("bits", (4, 2))
def test_codes_are_packed_low_bits_first(impl, bits):
    x = randn(3, 5, 11, seed=2)
    qx = impl.kv_quant.quantize(x, bits, -1, None)
    per_byte = 8 // bits
    assert qx.codes.dtype == torch.uint8, f"codes must be uint8, got {qx.codes.dtype}"
    assert tuple(qx.codes.shape) == (3, 5, math.ceil(11 / per_byte)), (
        f"codes shape {tuple(qx.codes.shape)}, expected (3, 5, {math.ceil(11 / per_byte)}): {per_byte} codes a byte")
    fields = [(qx.codes.long() >> (bits * i)) & (2 ** bits - 1) for i in range(per_byte)]
    codes = torch.stack(fields, dim=-1).flatten(-2)[..., :11].double()  # element j: byte j // per_byte, low bits first
    unpacked = codes * qx.scale.double() + qx.zero.double()
    assert_close(impl.kv_quant.dequantize(qx).double(), unpacked, atol=1e-5, rtol=1e-5,
                 what="dequantize vs the codes unpacked low bits first",
                 hint="element j goes to byte j // (8 / bits) at bit offset (j % (8 / bits)) * bits: the FIRST "
                      "element in the LOW bits")
    want, scale = minmax_groups_ref(x, bits, -1)
    assert bool(((unpacked - x.double()).abs() <= scale / 2 + 1e-6).all()), "unpacked codes do not reproduce x"


@pytest.mark.parametrize("bits", (8, 4, 2))
def test_a_constant_group_is_exact(impl, bits):
    x = torch.arange(16.0).view(2, 8) * 0.5
    x[0, :3] = 1.25  # a constant group [0, 3) next to ordinary ones; byte boundaries straddle the groups
    qx = impl.kv_quant.quantize(x, bits, -1, 3)
    got = impl.kv_quant.dequantize(qx)
    assert bool(torch.isfinite(got).all()), "a constant group gave NaN/inf: scale is 0 there, do not divide by it"
    assert torch.equal(got[0, :3], x[0, :3]), f"a constant group must come back exactly, got {got[0, :3].tolist()}"
    _, scale = minmax_groups_ref(x, bits, -1, 3)
    err = (got.double() - x.double()).abs()
    assert bool((err <= scale / 2 + 1e-6).all()), (
        f"next to a constant group the codes are wrong (error {float(err.max()):.3g}): a NaN code from 0 / 0 "
        "spoils the byte it is packed into")


@pytest.mark.parametrize("bits,dim,group_size", [(8, -1, None), (4, -1, 3), (2, -2, 4), (4, -2, None)])
def test_nbytes_is_codes_plus_scales_plus_zeros(impl, bits, dim, group_size):
    x = randn(2, 3, 9, 16, seed=3)
    qx = impl.kv_quant.quantize(x, bits, dim, group_size)
    n = x.shape[dim]
    groups = math.ceil(n / (group_size or n))
    others = x.numel() // n
    code_bytes = x.numel() // 16 * math.ceil(16 * bits / 8)
    want = code_bytes + 2 * others * groups * x.element_size()
    assert qx.nbytes == want, (f"nbytes {qx.nbytes}, expected {want} = codes {code_bytes} + scales and zero points "
                               f"2 * {others * groups} * {x.element_size()}: count all three, codes packed")


# ------------------------------------------------------ quantized KV cache --

def expected_cache(k, v, n, bits, residual, group_size):
    G = residual if group_size is None else group_size
    n_q = max(0, (n - residual) // G) * G
    k_hat, k_scale = minmax_groups_ref(k[:, :, :n_q], bits, -2, G)
    v_hat, v_scale = minmax_groups_ref(v[:, :, :n_q], bits, -1, group_size)
    return n_q, k_hat, k_scale, v_hat, v_scale


@pytest.mark.parametrize("bits,residual,group_size,chunks", [
    (8, 4, None, (1,) * 23), (4, 6, 3, (5, 1, 1, 7, 2, 1, 4)), (2, 0, 4, (3, 9, 1, 1, 8)), (4, 32, None, (23,))])
def test_cache_is_quantized_history_plus_exact_recent_tokens(impl, bits, residual, group_size, chunks):
    B, H, D = 2, 3, 8
    k, v = outlier_keys(B, H, sum(chunks), D, seed=4), randn(B, H, sum(chunks), D, seed=5)
    cache = impl.kv_quant.QuantizedKVCache(B, H, 64, D, bits=bits, residual=residual, group_size=group_size)
    n = 0
    for c in chunks:
        k_all, v_all = cache.update(k[:, :, n:n + c], v[:, :, n:n + c])
        n += c
        assert cache.seq_len == n and k_all.shape == (B, H, n, D), f"after {n} tokens: {tuple(k_all.shape)}"
        n_q, k_hat, k_scale, v_hat, v_scale = expected_cache(k, v, n, bits, residual, group_size)
        assert torch.equal(k_all[:, :, n_q:], k[:, :, n_q:n]) and torch.equal(v_all[:, :, n_q:], v[:, :, n_q:n]), (
            f"after {n} tokens the last {n - n_q} must be exact. {RESIDUAL_HINT}")
        for name, got, want, scale in (("keys", k_all, k_hat, k_scale), ("values", v_all, v_hat, v_scale)):
            off = (got[:, :, :n_q].double() - want).abs() > scale * 1.001 + 1e-5
            assert not bool(off.any()), (f"after {n} tokens, {int(off.sum())} quantized {name} differ from the "
                                         f"reference by more than one step. {KIVI_HINT}; {RESIDUAL_HINT}")


def test_outlier_channel_spoils_only_itself(impl):
    k = outlier_keys(T=40)
    cache = impl.kv_quant.QuantizedKVCache(1, 2, 40, 8, bits=4, residual=8, group_size=8)
    k_all, _ = cache.update(k, randn(1, 2, 40, 8, seed=6))
    normal = [c for c in range(8) if c != 3]
    err = (k_all[:, :, :32, normal] - k[:, :, :32, normal]).abs().max()
    per_channel = minmax_groups_ref(k[:, :, :32], 4, -2, 8)[1][..., normal].max()
    assert float(err) <= float(per_channel) / 2 + 1e-5, (
        f"error on the ordinary key channels {float(err):.3g}, expected <= {float(per_channel) / 2:.3g} (half a "
        f"per-channel step); the outlier channel (40 +- 1) has leaked into their range. {KIVI_HINT}")


@pytest.mark.parametrize("bits,residual,group_size", [(8, 4, None), (4, 6, 2), (2, 3, 3)])
def test_cache_nbytes_exact(impl, bits, residual, group_size):
    B, H, D, T = 2, 2, 8, 17
    cache = impl.kv_quant.QuantizedKVCache(B, H, 32, D, bits=bits, residual=residual, group_size=group_size)
    k, v = randn(B, H, T, D, seed=7), randn(B, H, T, D, seed=8)
    for t in range(T):
        cache.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
        n = t + 1
        G = residual if group_size is None else group_size
        n_q = max(0, (n - residual) // G) * G
        codes = 2 * B * H * n_q * math.ceil(D * bits / 8)
        stats = 2 * B * H * (n_q // G) * D * 4 + 2 * B * H * n_q * math.ceil(D / (group_size or D)) * 4
        exact = 2 * B * H * (n - n_q) * D * 4
        assert cache.nbytes == codes + stats + exact, (
            f"after {n} tokens nbytes {cache.nbytes}, expected codes {codes} + scales/zero points {stats} + "
            f"residual {exact}. {RESIDUAL_HINT}")


def tiny_model(impl, layers=2, seed=0):
    return make_model(impl, 48, hidden_size=32, num_layers=layers, num_heads=4, num_kv_heads=2, seed=seed).eval()


def quant_caches(impl, model, B, T, bits, residual):
    cfg = model.config
    return [impl.kv_quant.QuantizedKVCache(B, cfg.num_kv_heads, T, cfg.head_dim, bits=bits, residual=residual,
                                           group_size=4) for _ in model.layers]


def test_decoding_with_the_quantized_cache_stays_close(impl):
    # Bound tested: 8-bit codes keep every logit within 0.02 of the float cache's
    # (the logits of this model have a spread of about 1), and a residual window
    # covering the whole sequence gives the float cache's logits.
    model = tiny_model(impl)
    ids = torch.randint(0, 48, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)
        for bits, residual, bound in ((8, 4, 0.02), (8, 64, 1e-5)):
            caches = quant_caches(impl, model, 2, 64, bits, residual)
            steps = [model(ids[:, :6], caches=caches)] + [model(ids[:, t:t + 1], caches=caches) for t in range(6, 20)]
            got = torch.cat(steps, dim=1)
            err = float((got - full).abs().max())
            assert err <= bound, (f"{bits}-bit cache, residual {residual}: logits differ from the float cache by "
                                  f"{err:.3g} (allowed {bound}). {RESIDUAL_HINT}")


def test_quantized_cache_bad_input(impl):
    Q = impl.kv_quant
    assert_rejects(lambda: Q.quantize(randn(4, 4), 3, -1), "bits")
    assert_rejects(lambda: Q.quantize(randn(4, 4), 8, 2), "dim")
    assert_rejects(lambda: Q.quantize(randn(4, 4), 8, -1, 0), "group_size")
    assert_rejects(lambda: Q.QuantizedKVCache(1, 2, 8, 4, bits=5), "bits")
    cache = Q.QuantizedKVCache(1, 2, 8, 4, bits=4, residual=2, group_size=2)
    k = randn(1, 2, 5, 4, seed=9)
    before, _ = cache.update(k, k)
    nbytes = cache.nbytes
    assert_rejects(lambda: cache.update(randn(1, 3, 1, 4), randn(1, 3, 1, 4)), "k", "heads")
    assert_rejects(lambda: cache.update(randn(1, 2, 4, 4), randn(1, 2, 4, 4)), "cache", "positions", "max_seq_len")
    assert cache.seq_len == 5 and cache.nbytes == nbytes, "a rejected update changed the cache"
    after, _ = cache.update(k[:, :, :0], k[:, :, :0])
    assert torch.equal(after, before), "a rejected update (or an empty one) changed the cache's contents"


# --------------------------------------------------------------- retention --

def one_token_cache(impl, **curve):
    E = impl.kv_eviction
    cache = E.RetentionKVCache(1, 1, 4, 2, curve=E.ForgettingCurve(**curve))
    cache.append(randn(1, 1, 1, 2), randn(1, 1, 1, 2, seed=1), 0)
    return cache


def test_retention_decays_on_the_forgetting_curve(impl):
    cache = one_token_cache(impl, initial_strength=8.0, gain=32.0, refresh=0.02)
    for t in (0, 3, 8, 20):
        got = float(cache.retention(t)[0][cache.valid[0]][0])
        assert abs(got - math.exp(-t / 8)) < 1e-6, (
            f"retention of a token never attended, {t} steps later: {got:.6f}, expected exp(-{t}/8) = "
            f"{math.exp(-t / 8):.6f}: R = exp(-(t - tau) / S) must decay")


def test_attention_resets_the_clock_and_strengthens(impl):
    cache = one_token_cache(impl, initial_strength=8.0, gain=32.0, refresh=0.02)
    weights = torch.where(cache.valid, 0.5, 0.0)
    cache.reinforce(weights, 6)
    slot = cache.valid[0]
    r6, r16 = float(cache.retention(6)[0][slot][0]), float(cache.retention(16)[0][slot][0])
    assert abs(r6 - 1.0) < 1e-6, f"just attended (t=6): retention {r6}, expected 1 (tau <- t)"
    assert abs(r16 - math.exp(-10 / 24)) < 1e-6, (
        f"10 steps after an attention of 0.5: {r16:.6f}, expected exp(-10 / (8 + 32 * 0.5)) = {math.exp(-10 / 24):.6f}")
    cache.reinforce(torch.where(cache.valid, 0.01, 0.0), 16)  # below refresh: nothing happens
    r20 = float(cache.retention(20)[0][slot][0])
    assert abs(r20 - math.exp(-14 / 24)) < 1e-6, f"a weight below refresh changed retention: {r20:.6f}"


def test_soft_delete_adds_log_retention(impl):
    q = torch.tensor([[[[1.0, 0.0]]]])  # (1, 1, 1, 2)
    k = torch.tensor([[[[2.0, 0.0], [-2.0, 0.0], [0.5, 0.0]]]])  # logits 2, -2, 0.5
    retention = torch.tensor([[1.0, 0.05, 1.0]])  # the NEGATIVE-logit token is nearly forgotten
    got = torch.softmax(impl.kv_eviction.soft_delete_scores(q, k, retention, 1.0), dim=-1)
    want = torch.softmax(torch.tensor([2.0, -2.0, 0.5]) + torch.log(retention[0]), dim=-1)
    plain = torch.softmax(torch.tensor([2.0, -2.0, 0.5]), dim=-1)
    assert_close(got[0, 0, 0], want, probabilities=True, what="soft-deleted weights",
                 hint="soft deletion adds log(retention) to the logit; scaling the key by retention shrinks "
                      "negative logits towards 0 too, so a forgotten token with a negative logit GAINS weight")
    assert float(got[0, 0, 0, 1]) < float(plain[1]), "the forgotten token must lose weight, not gain it"


def test_sparse_masks_are_per_layer(impl):
    r0 = torch.tensor([[0.5, 0.005, 0.02, 0.0]])
    r1 = torch.tensor([[0.001, 0.5, 0.009, 1.0]])
    masks = impl.kv_eviction.sparse_attention_masks([r0, r1], 0.01)
    for i, (m, r) in enumerate(zip(masks, (r0, r1))):
        assert torch.equal(m, r >= 0.01), (f"layer {i}: mask {m.tolist()}, expected retention >= 0.01: "
                                           f"{(r >= 0.01).tolist()} (each layer from ITS retention; True = kept)")


def test_baseline_and_threshold_zero_equal_l09_generation(impl):
    model = tiny_model(impl)
    ids = torch.randint(0, 48, (2, 7), generator=torch.Generator().manual_seed(1))
    want = impl.decoder.generate(model, ids, 10)
    for mode, threshold in (("baseline", 0.01), ("sparse_attention", 0.0)):
        got, stats = impl.kv_eviction.generate_with_retention(model, ids, 10, mode=mode, threshold=threshold)
        assert torch.equal(got, want), f"mode {mode!r}, threshold {threshold}: tokens differ from L09's generate"
        for key in ("memory_tokens", "mean_retention", "sparsity", "tokens_per_s"):
            assert key in stats, f"stats has no {key!r}"
        assert stats["sparsity"] == 0.0, f"nothing is masked here, sparsity {stats['sparsity']}"


@pytest.mark.parametrize("mode", ("baseline", "sparse_attention"))
def test_retention_forward_equals_the_decoder(impl, mode):
    # a cache with room to spare: the free slots must not be attended, and nothing has decayed below 0.01 yet
    model = tiny_model(impl)
    ids = torch.randint(0, 48, (2, 9), generator=torch.Generator().manual_seed(4))
    caches = impl.kv_eviction.new_retention_caches(model, 2, 16)
    got = [impl.kv_eviction.retention_forward(model, ids[:, :5], caches, mode)[0]]
    got += [impl.kv_eviction.retention_forward(model, ids[:, t:t + 1], caches, mode)[0] for t in range(5, 9)]
    want = decoder_visible_ref(model, ids, torch.ones(9, 9, dtype=torch.bool).tril())
    assert_close(torch.cat(got, dim=1).double(), want, atol=1e-4, rtol=1e-4, what=f"retention_forward ({mode})",
                 hint="attend only to slots that hold a token (valid), plus the new tokens causally; positions "
                      "continue from next_position")


def test_eviction_frees_slots(impl):
    E = impl.kv_eviction
    cache = E.RetentionKVCache(1, 2, 4, 4, curve=E.ForgettingCurve(initial_strength=4.0), num_sink=1)
    storages = {cache.keys.untyped_storage().data_ptr(), cache.values.untyped_storage().data_ptr()}
    nbytes = cache.nbytes
    favourite = None
    for t in range(12):
        if t > 0:
            w = torch.zeros(1, 4)
            if favourite is not None:
                w[cache.positions == favourite] = 0.9  # position 2 keeps being attended
            cache.reinforce(w, t)
        cache.append(randn(1, 2, 1, 4, seed=t), randn(1, 2, 1, 4, seed=100 + t), t)
        favourite = 2 if t >= 2 else None
        held = int(cache.num_tokens[0])
        assert held == min(t + 1, 4), f"after {t + 1} tokens the cache holds {held}, expected {min(t + 1, 4)}"
    kept = sorted(cache.positions[0][cache.valid[0]].tolist())
    assert kept == [0, 2, 10, 11], (f"kept positions {kept}, expected [0, 2, 10, 11]: the sink 0, the attended "
                                    "token 2 and the newest; the others had the lowest retention and were evicted")
    assert cache.nbytes == nbytes and storages == {cache.keys.untyped_storage().data_ptr(),
                                                    cache.values.untyped_storage().data_ptr()}, (
        "evicting must reuse the slots of the preallocated buffers, not grow new ones")


# ------------------------------------------------------------------- sinks --

@pytest.mark.parametrize("num_sink,recent,length", [(2, 4, 5), (2, 4, 16), (1, 3, 12), (0, 5, 11)])
def test_sinks_equal_masked_full_attention(impl, num_sink, recent, length):
    model = tiny_model(impl)
    ids = torch.randint(0, 48, (1, length), generator=torch.Generator().manual_seed(2))
    cfg = model.config
    caches = [impl.kv_eviction.SinkKVCache(1, cfg.num_kv_heads, num_sink, recent, cfg.head_dim) for _ in model.layers]
    with torch.no_grad():
        got = torch.cat([model(ids[:, t:t + 1], caches=caches) for t in range(length)], dim=1)
    p, j = torch.arange(length)[:, None], torch.arange(length)[None]
    visible = (j <= p) & ((j < num_sink) | (p - j < recent))
    want = decoder_visible_ref(model, ids, visible)
    assert_close(got.double(), want, atol=1e-4, rtol=1e-4, what="logits with sinks + window",
                 hint="keep the FIRST num_sink tokens and the last recent - 1; keys keep the rotation of their "
                      "original position (rotated once, before caching)")
    if length <= num_sink + recent:
        assert_close(got, model(ids), atol=1e-4, rtol=1e-4, what="nothing evicted: equal to the full model")


def test_rerotate_composes_rotations(impl):
    k = randn(1, 2, 5, 8, seed=3)
    p, p2 = torch.tensor([0, 3, 4, 9, 20]), torch.tensor([0, 1, 2, 3, 4])
    rotated = rope_rotate_ref(k, p).float()
    got = impl.kv_eviction.rerotate(rotated, p, p2)
    assert_close(got.double(), rope_rotate_ref(k, p2), atol=1e-5, rtol=1e-5,
                 what="rerotate(rotate(k, p), p -> p')", hint="rotate by the angle of p' - p: R(p') = R(p' - p) R(p)")


# ===========================================================================
# Part 4: decode attention over the quantized cache in Triton (kv_quant_triton).
# On a CUDA machine it runs on the GPU; without one, on CPU tensors under
# TRITON_INTERPRET=1 (the plugin sets it): shapes stay small. The codes, scales
# and zero points are built here from torch primitives in the documented format
# (not by quantize), and the expected values are attention over the cache
# dequantized by the formula code * scale + zero, in float64.
# ===========================================================================
ZERO_HINT = "dequantize as code * scale + zero: without the zero point every group's grid starts at 0"
NIBBLE_HINT = ("packed codes: element j of a row is in byte j // (8 // bits), the FIRST element in the LOW bits "
               "(byte j of 4-bit codes holds channels 2j (low nibble) and 2j + 1 (high nibble))")
KEY_STATS_HINT = ("keys are grouped PER CHANNEL along the tokens: key n, channel d uses k.scale[..., n // Gk, d] and "
                  "k.zero[..., n // Gk, d]; values PER TOKEN: v.scale[..., n, d // Gv]")


def random_quantized(impl, shape, bits, dim, group_size, seed, dtype=torch.float32, device="cpu"):
    """(kv_quant.QuantizedTensor, x_hat float64) of random codes, scales and zero points in the documented
    layout (coursekit.reference.random_codes_ref): built without quantize."""
    fields, x_hat = random_codes_ref(shape, bits, dim, group_size, seed=seed, dtype=dtype)
    fields.update(codes=fields["codes"].to(device), scale=fields["scale"].to(device), zero=fields["zero"].to(device))
    return impl.kv_quant.QuantizedTensor(**fields), x_hat


QUANT_KERNEL_CASES = {
    # name: (key bits, value bits, H, Hkv, Lq, key group (tokens), value group (channels), kv_lens, num_splits, D)
    # T = 37 keys: not a multiple of the 16-key interpreter tile nor of any group size below
    "int8_mha_groups_of_16": (8, 8, 4, 4, 1, 16, None, None, None, 16),
    "int4_gqa_ragged_groups_of_5": (4, 4, 4, 2, 1, 5, 4, [0, 20, 37], 3, 16),
    "int4_mqa_groups_of_32": (4, 4, 4, 1, 1, 32, None, [37, 1, 30], 2, 16),
    "int8_keys_int4_values_d12": (8, 4, 4, 2, 1, 7, 3, [37, 11, 25], 2, 12),
    "int2_gqa": (2, 2, 4, 2, 1, 16, 8, [23, 37, 9], 2, 16),
    "int4_lq3_causal": (4, 4, 4, 2, 3, 16, None, [37, 2, 17], 2, 16),
    # 32 and 64 channels: wider tiles than 16 columns unpack differently (see _load_codes)
    "int4_gqa_d32": (4, 4, 4, 2, 1, 16, None, [37, 5, 20], 2, 32),
    "int2_keys_int4_values_d64": (2, 4, 4, 2, 1, 8, 16, [30, 37, 1], 3, 64),
}


def quantized_cache(impl, case, device, seed=70, dtype=torch.float32):
    kb, vb, H, Hkv, q_len, kg, vg, lens, splits, D = QUANT_KERNEL_CASES[case]
    B, T = 3, 37
    q = randn(B, H, q_len, D, seed=seed, dtype=dtype, device=device)
    k, k_hat = random_quantized(impl, (B, Hkv, T, D), kb, -2, kg, seed + 1, dtype, device)  # keys per channel
    v, v_hat = random_quantized(impl, (B, Hkv, T, D), vb, -1, vg, seed + 2, dtype, device)  # values per token
    return q, k, v, k_hat, v_hat, lens, splits


def likely_mistake(out, q, k, v, lens):
    """Which usual mistake out matches, if any: attention over a cache dequantized that wrong way."""
    def misread(x, zero=True, swap=False, per_token=False):
        codes, scale, zero_t = x.codes, x.scale, x.zero if zero else torch.zeros_like(x.zero)
        if swap and x.bits < 8:  # the first element read from the HIGH bits
            per_byte = 8 // x.bits
            unpacked = ((codes.cpu().long()[..., None] >> (torch.arange(per_byte) * x.bits)) & (2 ** x.bits - 1))
            codes = pack_codes_ref(unpacked.flip(-1).flatten(-2), x.bits)
        if per_token:            # one statistic per key (its group's channel 0) for all channels
            scale, zero_t = scale[..., :1].expand_as(scale), zero_t[..., :1].expand_as(zero_t)
        return dequantize_codes_ref(codes, scale, zero_t, x.bits, x.dim, x.group_size, x.shape)
    candidates = {
        "the zero point is not applied (" + ZERO_HINT + ")": (misread(k, zero=False), misread(v, zero=False)),
        "the nibbles are read in the wrong order (" + NIBBLE_HINT + ")": (misread(k, swap=True), misread(v, swap=True)),
        "the keys' statistics are read per token (" + KEY_STATS_HINT + ")": (misread(k, per_token=True),
                                                                            misread(v)),
    }
    kv_lens = None if lens is None else torch.tensor(lens)
    for what, (k_bad, v_bad) in candidates.items():
        bad = decode_attention_ref(q.cpu(), k_bad, v_bad, kv_lens)[0]
        if torch.allclose(out.cpu().double(), bad, atol=1e-4, rtol=1e-4):
            return "out equals attention over a cache read wrongly: " + what
    return None


@pytest.mark.triton
@pytest.mark.parametrize("case", QUANT_KERNEL_CASES, ids=list(QUANT_KERNEL_CASES))
def test_quantized_kernel_equals_attention_over_the_dequantized_cache(impl, triton_device, case):
    q, k, v, k_hat, v_hat, lens, splits = quantized_cache(impl, case, triton_device)
    kv_lens = None if lens is None else torch.tensor(lens, device=triton_device)
    out, lse = impl.kv_quant_triton.triton_quantized_decode_attention(q, k, v, kv_lens=kv_lens, num_splits=splits)
    want_out, want_lse = decode_attention_ref(q.cpu(), k_hat, v_hat, None if lens is None else torch.tensor(lens))
    hint = "; ".join([ZERO_HINT, NIBBLE_HINT if 4 in (k.bits, v.bits) or k.bits == 2 else "", KEY_STATS_HINT,
                      "the rest is L10's kernel: kv_lens, splits, GQA packing, bottom-right causal"])
    assert out.shape == q.shape and out.dtype == q.dtype, f"out is {out.dtype} {tuple(out.shape)}, want q's"
    if not torch.allclose(out.cpu().double(), want_out, atol=1e-4, rtol=1e-4):
        hint = likely_mistake(out, q, k, v, lens) or hint
    assert_close(out, want_out, what=f"quantized-cache out ({case})", hint=hint)
    assert_close(lse, want_lse, what=f"quantized-cache lse ({case})", hint="lse is the natural log; " + hint)


@pytest.mark.triton
def test_quantized_kernel_reads_the_codes_it_is_given(impl, triton_device):
    # Change the codes of one KV head of one row (and nothing else): exactly the G query heads that read it
    # must change, to attention over the new codes; a kernel that reads anything but these codes (a float
    # copy made earlier, another head's codes) cannot follow.
    kt = impl.kv_quant_triton
    q, k, v, k_hat, v_hat, _, _ = quantized_cache(impl, "int4_gqa_ragged_groups_of_5", triton_device, seed=80)
    before, _ = kt.triton_quantized_decode_attention(q, k, v, num_splits=2)
    k2, _ = random_quantized(impl, tuple(k.shape), 4, -2, 5, seed=99, device=triton_device)
    k.codes = k.codes.clone()
    k.codes[1, 0] = k2.codes[1, 0]                              # row 1, KV head 0: new codes, same statistics
    k_hat = dequantize_codes_ref(k.codes, k.scale, k.zero, k.bits, k.dim, k.group_size, k.shape)
    after, _ = kt.triton_quantized_decode_attention(q, k, v, num_splits=2)
    assert_close(after, decode_attention_ref(q.cpu(), k_hat, v_hat)[0], what="out after new codes for (row 1, KV head 0)",
                 hint="read the codes of k.codes at (b, hkv) on every call: " + NIBBLE_HINT)
    changed = (after.cpu() != before.cpu()).flatten(2).any(-1)   # (B, H)
    want = torch.zeros_like(changed)
    want[1, :2] = True                                          # G = 2: query heads 0 and 1 read KV head 0
    assert torch.equal(changed, want), (
        f"query heads whose output changed (B, H):\n{changed.int()}\nexpected only row 1, heads 0-1 "
        f"(GQA: query head h reads KV head h // G)")


@pytest.mark.triton
def test_quantized_kernel_never_builds_the_float_cache(impl, triton_device):
    # 4-bit codes hold half as many elements as the keys they encode: dequantizing the cache before
    # attending (quantize -> dequantize -> L10) would create a tensor of B * Hkv * T * D elements.
    kt = impl.kv_quant_triton
    B, H, Hkv, T, D = 2, 4, 2, 64, 16
    q = randn(B, H, 1, D, seed=90, device=triton_device)
    k, k_hat = random_quantized(impl, (B, Hkv, T, D), 4, -2, 16, seed=91, device=triton_device)
    v, v_hat = random_quantized(impl, (B, Hkv, T, D), 4, -1, None, seed=92, device=triton_device)
    out, _ = assert_never_materialises(lambda: kt.triton_quantized_decode_attention(q, k, v, num_splits=2),
                                       B * Hkv * T * D, what="the dequantized key or value cache",
                                       hint="unpack and dequantize each tile inside the kernel, in registers")
    assert_close(out, decode_attention_ref(q.cpu(), k_hat, v_hat)[0], what="out over a 4-bit cache")


@pytest.mark.triton
def test_quantized_kernel_bad_input_is_rejected(impl, triton_device):
    kt = impl.kv_quant_triton
    q, k, v, k_hat, v_hat, _, _ = quantized_cache(impl, "int8_mha_groups_of_16", triton_device, seed=95)
    out, _ = kt.triton_quantized_decode_attention(q, k, v, num_splits=2)  # a valid call first
    assert_close(out, decode_attention_ref(q.cpu(), k_hat, v_hat)[0], what="out of the valid call")
    f = kt.triton_quantized_decode_attention
    k_per_token, _ = random_quantized(impl, tuple(k.shape), 8, -1, None, seed=96, device=triton_device)
    v_per_channel, _ = random_quantized(impl, tuple(v.shape), 8, -2, 16, seed=97, device=triton_device)
    v_short, _ = random_quantized(impl, (3, 4, 20, 16), 8, -1, None, seed=98, device=triton_device)
    assert_rejects(lambda: f(q, k_hat.float(), v), "k", "QuantizedTensor")
    assert_rejects(lambda: f(q, k_per_token, v), "k", "per channel", "dim")
    assert_rejects(lambda: f(q, k, v_per_channel), "v", "per token", "dim")
    assert_rejects(lambda: f(q, k, v_short), "v", "shape")
    assert_rejects(lambda: f(q[0], k, v), "q")
    assert_rejects(lambda: f(q.half(), k, v), "dtype", "scale", "q")
    assert_rejects(lambda: f(q[:, :3], k, v), "heads", "q")
    assert_rejects(lambda: f(q, k, v, num_splits=0), "num_splits")
    assert_rejects(lambda: f(q, k, v, kv_lens=torch.tensor([38, 1, 2], device=triton_device)), "kv_lens")
    assert_rejects(lambda: f(q, k, v, kv_lens=torch.tensor([1.0, 2.0, 3.0], device=triton_device)), "kv_lens")
