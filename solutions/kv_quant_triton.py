"""L12 part 4 — decode attention over a quantized KV cache, dequantized in registers (Triton).

L10's split-KV kernel (decode_attention_triton), with one change: the keys and
values arrive as the b-bit codes of kv_quant's format, and every tile is turned
back into real numbers INSIDE the kernel, in registers, right before it is used:

    K[n, d] = code_k[n, d] * k.scale[n // Gk, d] + k.zero[n // Gk, d]     keys per channel, Gk tokens a group
    V[n, d] = code_v[n, d] * v.scale[n, d // Gv] + v.zero[n, d // Gv]     values per token, Gv channels a group

The full-precision cache never exists in memory. That is the point: a decode
step does two FLOPs per byte of cache it reads, so it is bound by the bytes it
reads (L10), and reading int8 codes instead of bfloat16 halves them, int4
quarters them (plus the scales and zero points: 2 x 2 bytes per group of Gk
tokens of a key channel and per group of Gv channels of a value token, ~3 % of
the codes at Gk = Gv = 128). Dequantizing first (`dequantize`, then L10's
kernel) would write the full-precision cache and read it back: more bytes than
the bfloat16 kernel reads in the first place.

    stage 1   grid (S, B * Hkv, row blocks), as L10: program (s, b, hkv) streams the
              codes of split s of KV head hkv once, unpacks and dequantizes each
              (BLOCK_N, D) tile of keys and of values in float32 registers, rounds
              it to q's dtype for tl.dot, and attends with the G * Lq packed query
              rows of the group (online softmax in float32, exp2). Writes a partial
              output and lse per split, in L10's partial layout.
    stage 2   L10's _merge_kernel, unchanged: the partials merge by their lse.

API: triton_quantized_decode_attention(q, k, v, kv_lens=None, scale=None,
num_splits=None) with k, v the QuantizedTensor objects kv_quant.quantize returns:
k = quantize(keys, bits, dim=-2, group_size=Gk), v = quantize(values, bits,
dim=-1, group_size=Gv). The objects, not loose codes / scale / zero tensors,
because they carry what the kernel must know to read the codes (bits, which dim
is grouped, the group size, the logical shape): a key tensor quantized per token
is refused by name instead of being read as if it were per channel, and a
caller cannot pair codes with the scales of another layout. k and v may use
different bits (KIVI often keeps keys at more bits than values).

The residual window. QuantizedKVCache keeps its newest tokens in full
precision; this kernel takes the quantized part only, and returns its lse, so
the window is one more partial result merged exactly by lse (L10's
merge_partials, or its Triton kernel):

    out_q, lse_q = triton_quantized_decode_attention(q, k_quantized, v_quantized)   # old tokens
    out_r, lse_r = triton_decode_attention(q, k_recent, v_recent)                      # the window
    out, lse = merge_partials(out_q, lse_q, out_r, lse_r)

Why not a second, full-precision segment inside this kernel: the window is
short (< residual + Gk tokens), so its cost is the extra launches, not bytes,
and a kernel with two segment kinds doubles the code a student must read. The
recipe is for decoding (Lq = 1); with Lq > 1 the kernel applies L10's
bottom-right rule to the segment it is given, which for the OLD segment (seen
whole by every new query) is right only if its queries are passed one at a time.

Layouts (kv_quant.QuantizedTensor, B batch, Hkv KV heads, T tokens, D head dim):
    k.codes (B, Hkv, T, ceil(D * kb / 8)) uint8, packed along D, first element in the LOW bits
    k.scale, k.zero (B, Hkv, ceil(T / Gk), D)        one per channel per group of Gk tokens
    v.codes (B, Hkv, T, ceil(D * vb / 8)) uint8, packed along D
    v.scale, v.zero (B, Hkv, T, ceil(D / Gv))        one per token per group of Gv channels
q (B, H, Lq, D) in float16, bfloat16 or float32, the dtype of the scales (the
dtype the cache was quantized from). kv_lens, the causal rule, GQA and lse:
as L10 (tutorial/CONVENTIONS.md, "Decode attention"). Bits 8, 4 and 2; D <= 256.

Tested under TRITON_INTERPRET=1 on CPU at small shapes (Triton 3.9), and on an
H200 (Triton 3.6, torch 2.11): the L12 suites' Triton and GPU tests passed there
except the float16 int4 case at D = 16, which found the compiler bug that
_load_codes now steps around (its fix was checked on the H200 in a standalone
run, int2 / int4 / int8 at D = 16, 32, 64; the suites have not been re-run on the
GPU since). Speed, from benchmarks/kv_quant_gpu.py on the H200
(benchmarks/results/kv_quant_gpu.csv): see tutorial/L12_kv_compression.
"""
import math

import torch
import triton
import triton.language as tl

from ._checks import check_kv_lens, check_num_splits, check_scale, check_tensor, check_triton_device, contiguous_last
from .decode_attention_triton import INTERPRETED, INTERPRETER_SPLITS, MAX_BLOCK_M, _merge_kernel, _sm_count, \
    choose_num_splits
from ._triton_constants import LN2, LOG2E  # tl.constexpr: visible inside the kernels; host code reads LOG2E.value
from .kv_quant import SUPPORTED_BITS, QuantizedTensor


# ---------------------------------------------------------------------------
# Unpacking and dequantizing one tile, in registers.
# ---------------------------------------------------------------------------
@triton.jit
def _unpack(packed, BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """uint8 (BLOCK_N, BLOCK_D * BITS // 8) bytes -> uint8 codes (BLOCK_N, BLOCK_D).

    kv_quant's order: element j of a row sits in byte j // (8 // BITS), at bits
    [(j % (8 // BITS)) * BITS, ... + BITS): the FIRST element in the LOW bits.
    For 4 bits, byte j holds elements 2j (low nibble) and 2j + 1 (high nibble):
    split them into two (BLOCK_N, BLOCK_D / 2) tiles, tl.join stacks them on a
    new last axis -> (BLOCK_N, BLOCK_D / 2, 2), and the row-major reshape reads
    that as 2j, 2j + 1, ...: the interleave, without a gather. Cost: two integer
    ops per byte plus a register shuffle, next to nothing against the load."""
    ### BEGIN SOLUTION
    if BITS == 8:
        codes = packed                                            # one code per byte: nothing to unpack
    elif BITS == 4:
        lo = packed & ((1 << BITS) - 1)                           # element 2j
        hi = packed >> BITS                                       # element 2j + 1 (a uint8 shift brings in 0s)
        codes = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_D))   # (N, D/2, 2) -> (N, D): 2j, 2j + 1
    else:
        # 2 bits: byte j holds elements 4j .. 4j + 3 at bits 0, 2, 4, 6. join(join(c0, c2), join(c1, c3))
        # is (N, D/4, 2, 2) with [j, a, b] = c_{2a + b}: row-major, element 4j + 2a + b. As wanted.
        c0 = packed & ((1 << BITS) - 1)
        c1 = (packed >> BITS) & ((1 << BITS) - 1)
        c2 = (packed >> (2 * BITS)) & ((1 << BITS) - 1)
        c3 = packed >> (3 * BITS)
        codes = tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), (BLOCK_N, BLOCK_D))
    return codes
    ### END SOLUTION


@triton.jit
def _load_codes(c_base, stride_cn, offs_n, n_ok, BITS: tl.constexpr, NBYTES: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """The codes of tokens offs_n, unpacked: uint8 (BLOCK_N, BLOCK_D). Reads BLOCK_N x NBYTES bytes
    (NBYTES = ceil(D * BITS / 8)): the only large read of a tile. Hidden tokens and padding give code 0.

    A compiler bug to step around: on an H200 (Triton 3.6), codes unpacked by _unpack's join + reshape
    came out scrambled when the tile is 16 columns wide (BLOCK_D = 16, int4 and int2) and feeds a
    float16 / bfloat16 tl.dot (float32, and 32+ columns, were right; the interpreter is right). For
    that one width, load each byte once per code it holds (element d reads byte d // (8 // BITS) and
    shifts by its slot): a plain load, no shuffle, correct everywhere, and at 16 columns the extra
    reads cost nothing. It is no general replacement: at D = 128 it made the int4 kernel 4x slower
    (1.69 ms against 0.38 ms at B = 8, T = 32k), the join is what keeps the unpack free."""
    ### BEGIN SOLUTION
    GATHER: tl.constexpr = BITS < 8 and BLOCK_D == 16
    PER_BYTE: tl.constexpr = 8 // BITS
    if GATHER:
        offs_byte = tl.arange(0, BLOCK_D) // PER_BYTE             # column d reads the byte that holds element d
    else:
        offs_byte = tl.arange(0, BLOCK_D // PER_BYTE)             # every byte once
    packed = tl.load(c_base + offs_n[:, None].to(tl.int64) * stride_cn + offs_byte[None, :],
                     mask=n_ok[:, None] & (offs_byte[None, :] < NBYTES), other=0)
    if GATHER:
        shift = ((tl.arange(0, BLOCK_D) % PER_BYTE) * BITS).to(tl.uint8)  # element d's slot: the first in the LOW bits
        codes = (packed >> shift[None, :]) & ((1 << BITS) - 1)
    else:
        codes = _unpack(packed, BITS, BLOCK_N, BLOCK_D)
    return codes
    ### END SOLUTION


@triton.jit
def _load_key_tile(kc_base, ks_base, kz_base, stride_kcn, stride_ksg, start_n, offs_n, n_ok, offs_d, d_ok,
                   BITS: tl.constexpr, NBYTES: tl.constexpr, GROUP_N: tl.constexpr, ONE_GROUP: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Keys [start_n, start_n + BLOCK_N) x all D channels, dequantized: float32 (BLOCK_N, BLOCK_D).

    Keys are grouped PER CHANNEL: key n, channel d uses scale[n // GROUP_N, d] and
    zero[n // GROUP_N, d] (scale/zero rows are groups of GROUP_N tokens, columns
    channels). ONE_GROUP (GROUP_N a multiple of BLOCK_N; tiles start at multiples
    of BLOCK_N) means the whole tile is inside one group: one (D,) row of scales
    and zeros, broadcast over the tile's keys, instead of BLOCK_N copies of it.
    Padding channels come out 0; hidden keys (n_ok false) finite (the caller masks their scores)."""
    ### BEGIN SOLUTION
    codes = _load_codes(kc_base, stride_kcn, offs_n, n_ok, BITS, NBYTES, BLOCK_N, BLOCK_D).to(tl.float32)
    # -- this tile's scales and zero points: per channel, per group of GROUP_N keys --
    if ONE_GROUP:
        g = start_n // GROUP_N                                           # the tile's one group
        scale = tl.load(ks_base + g * stride_ksg + offs_d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
        zero = tl.load(kz_base + g * stride_ksg + offs_d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    else:
        g = (offs_n // GROUP_N).to(tl.int64)                             # (BLOCK_N,) each key's group
        stat_mask = n_ok[:, None] & d_ok[None, :]
        scale = tl.load(ks_base + g[:, None] * stride_ksg + offs_d[None, :], mask=stat_mask, other=0.0)
        zero = tl.load(kz_base + g[:, None] * stride_ksg + offs_d[None, :], mask=stat_mask, other=0.0)
        scale, zero = scale.to(tl.float32), zero.to(tl.float32)
    # -- K = code * scale + zero: one FMA per element, float32, never written to memory. Hidden keys get
    # finite values (codes 0: the group's zero point), and the caller masks their scores --
    k = codes * scale + zero
    return k
    ### END SOLUTION


@triton.jit
def _load_value_tile(vc_base, vs_base, vz_base, stride_vcn, stride_vsn, offs_n, n_ok, offs_d, d_ok,
                     BITS: tl.constexpr, NBYTES: tl.constexpr, GROUP_D: tl.constexpr, ONE_GROUP: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Values [offs_n] x all D channels, dequantized: float32 (BLOCK_N, BLOCK_D).

    Values are grouped PER TOKEN: token n, channel d uses scale[n, d // GROUP_D]
    and zero[n, d // GROUP_D]. ONE_GROUP (GROUP_D >= D, the default: the whole
    head_dim is one group) means one scale and one zero per token: a (BLOCK_N, 1)
    column broadcast over the channels. Hidden keys give 0 (their weight p is 0 too)."""
    ### BEGIN SOLUTION
    codes = _load_codes(vc_base, stride_vcn, offs_n, n_ok, BITS, NBYTES, BLOCK_N, BLOCK_D).to(tl.float32)
    rows = offs_n.to(tl.int64) * stride_vsn                              # (BLOCK_N,) each token's statistics
    if ONE_GROUP:
        scale = tl.load(vs_base + rows, mask=n_ok, other=0.0).to(tl.float32)[:, None]   # (BLOCK_N, 1)
        zero = tl.load(vz_base + rows, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    else:
        cols = offs_d // GROUP_D                                         # (BLOCK_D,) each channel's group
        stat_mask = n_ok[:, None] & d_ok[None, :]
        scale = tl.load(vs_base + rows[:, None] + cols[None, :], mask=stat_mask, other=0.0).to(tl.float32)
        zero = tl.load(vz_base + rows[:, None] + cols[None, :], mask=stat_mask, other=0.0).to(tl.float32)
    v = codes * scale + zero                                             # V = code * scale + zero
    return v
    ### END SOLUTION


# ---------------------------------------------------------------------------
# Stage 1: one program = one split of one KV head, all G * Lq query rows of its group.
# ---------------------------------------------------------------------------
@triton.jit
def _quantized_split_kernel(
        Q, KC, KS, KZ, VC, VS, VZ, KV_LENS, O_PART, LSE_PART,
        stride_kcb, stride_kch, stride_kcn,    # key codes (B, Hkv, T, K_BYTES)
        stride_ksb, stride_ksh, stride_ksg,    # key scale and zero (B, Hkv, ceil(T / K_GROUP), D), one layout
        stride_vcb, stride_vch, stride_vcn,    # value codes (B, Hkv, T, V_BYTES)
        stride_vsb, stride_vsh, stride_vsn,    # value scale and zero (B, Hkv, T, ceil(D / V_GROUP)), one layout
        H, Hkv, Lq, T, S, chunk, qk_scale,
        K_BITS: tl.constexpr, K_BYTES: tl.constexpr, K_GROUP: tl.constexpr, K_ONE_GROUP: tl.constexpr,
        V_BITS: tl.constexpr, V_BYTES: tl.constexpr, V_GROUP: tl.constexpr, V_ONE_GROUP: tl.constexpr,
        FOLD_K: tl.constexpr, FOLD_V: tl.constexpr,
        GROUP: tl.constexpr, HAS_LENS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Partial attention of query rows [row0, row0 + BLOCK_M) of KV group (b, hkv) over the
    quantized keys [split * chunk, (split + 1) * chunk) that exist for row b.

    Exactly L10's _split_kernel, but K and V tiles come from _load_key_tile and
    _load_value_tile. q contiguous (B, H, Lq, D); partials contiguous (B, H, Lq, S, D)
    and (B, H, Lq, S), float32 (with S = 1: out and lse themselves)."""
    split = tl.program_id(0)
    off_bkv = tl.program_id(1)
    off_b = off_bkv // Hkv
    off_hkv = off_bkv % Hkv
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM                                     # padding columns when D is not a power of 2
    # this (batch, KV head)'s codes and statistics
    kc_base = KC + off_b.to(tl.int64) * stride_kcb + off_hkv.to(tl.int64) * stride_kch
    ks_base = KS + off_b.to(tl.int64) * stride_ksb + off_hkv.to(tl.int64) * stride_ksh
    kz_base = KZ + off_b.to(tl.int64) * stride_ksb + off_hkv.to(tl.int64) * stride_ksh
    vc_base = VC + off_b.to(tl.int64) * stride_vcb + off_hkv.to(tl.int64) * stride_vch
    vs_base = VS + off_b.to(tl.int64) * stride_vsb + off_hkv.to(tl.int64) * stride_vsh
    vz_base = VZ + off_b.to(tl.int64) * stride_vsb + off_hkv.to(tl.int64) * stride_vsh
    ### BEGIN SOLUTION
    # -- the tile's query rows: row r = g * Lq + i is query i of head hkv * G + g (GQA, interleaved) --
    offs_r = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    r_ok = offs_r < GROUP * Lq                                   # padding rows of the tile
    off_g = offs_r // Lq
    off_i = offs_r % Lq
    off_h = off_hkv * GROUP + off_g                              # (BLOCK_M,) query head of each row

    # -- this row's cache length and the key range of this split --
    if HAS_LENS:
        kv_len = tl.load(KV_LENS + off_b).to(tl.int32)           # ragged batch: row b has kv_len real keys
    else:
        kv_len = T
    lo = split * chunk                                           # a multiple of BLOCK_N (the launcher's chunk)
    hi = tl.minimum(lo + chunk, kv_len)                          # keys past kv_len do not exist
    pos = kv_len - Lq + off_i                                    # (BLOCK_M,) bottom-right: the last Lq positions

    # -- q stays in registers for the whole loop: (BLOCK_M, BLOCK_D), read once --
    row = (off_b * H + off_h).to(tl.int64) * Lq + off_i         # (BLOCK_M,) index of (b, h, i) in (B, H, Lq)
    q = tl.load(Q + row[:, None] * HEAD_DIM + offs_d[None, :], mask=r_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                 # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)        # running sum of exp2(s - m_i) v

    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_ok = offs_n < hi                                       # the split's (and the cache's) last tile
        if FOLD_K:
            # -- the tile lies in ONE key group (s, z: (D,)): q . (c s + z) = (q * s) . c + q . z, so the
            # statistics scale the (BLOCK_M, D) query tile instead of the (BLOCK_N, D) key tile --
            g = start_n // K_GROUP
            ks = tl.load(ks_base + g * stride_ksg + offs_d, mask=d_ok, other=0.0).to(tl.float32)
            kz = tl.load(kz_base + g * stride_ksg + offs_d, mask=d_ok, other=0.0).to(tl.float32)
            kcodes = _load_codes(kc_base, stride_kcn, offs_n, n_ok, K_BITS, K_BYTES, BLOCK_N, BLOCK_D)
            q_s = (q.to(tl.float32) * ks[None, :]).to(q.dtype)                       # (BLOCK_M, BLOCK_D)
            q_z = tl.sum(q.to(tl.float32) * kz[None, :], 1)                          # (BLOCK_M,)
            kcodes = kcodes.to(tl.float32).to(q.dtype)                               # exact: integers <= 255
            qk = tl.dot(q_s, tl.trans(kcodes), input_precision=DOT_PRECISION)
            qk = (qk + q_z[:, None]) * qk_scale
        else:
            # -- K tile: codes read from HBM, dequantized in registers, rounded to q's dtype for the MMA --
            k = _load_key_tile(kc_base, ks_base, kz_base, stride_kcn, stride_ksg, start_n, offs_n, n_ok, offs_d,
                               d_ok, K_BITS, K_BYTES, K_GROUP, K_ONE_GROUP, BLOCK_N, BLOCK_D)  # (BLOCK_N, BLOCK_D)
            # -- qk = q k^T * scale * log2(e): (BLOCK_M, D) @ (D, BLOCK_N) -> (BLOCK_M, BLOCK_N), float32 --
            qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        visible = n_ok[None, :] & (offs_n[None, :] <= pos[:, None])   # exists, and causal j <= pos
        qk = tl.where(visible, qk, float("-inf"))
        # -- online softmax in float32 (L02): new max, guarded for rows that have seen nothing --
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)    # exp2(-inf - (-inf)) would be NaN
        p = tl.math.exp2(qk - m_safe[:, None])                   # (BLOCK_M, BLOCK_N), 0 where hidden
        alpha = tl.math.exp2(m_i - m_safe)                       # rescales the old sums; 0 when m_i = -inf
        l_i = l_i * alpha + tl.sum(p, 1)
        if FOLD_V:
            # -- one value group per token (s_n, z_n): sum_n p_n (c_n s_n + z_n) = (p * s) @ c + p @ z --
            rows = offs_n.to(tl.int64) * stride_vsn
            vs = tl.load(vs_base + rows, mask=n_ok, other=0.0).to(tl.float32)     # (BLOCK_N,)
            vz = tl.load(vz_base + rows, mask=n_ok, other=0.0).to(tl.float32)
            vcodes = _load_codes(vc_base, stride_vcn, offs_n, n_ok, V_BITS, V_BYTES, BLOCK_N, BLOCK_D)
            vcodes = vcodes.to(tl.float32).to(q.dtype)                               # exact: integers <= 255
            acc = tl.dot((p * vs[None, :]).to(q.dtype), vcodes, acc * alpha[:, None],
                         input_precision=DOT_PRECISION)
            acc += tl.sum(p * vz[None, :], 1)[:, None]
        else:
            # -- V tile, dequantized the same way; (BLOCK_M, BLOCK_N) @ (BLOCK_N, D) -> (BLOCK_M, D) --
            v = _load_value_tile(vc_base, vs_base, vz_base, stride_vcn, stride_vsn, offs_n, n_ok, offs_d, d_ok,
                                 V_BITS, V_BYTES, V_GROUP, V_ONE_GROUP, BLOCK_N, BLOCK_D)
            acc = tl.dot(p.to(q.dtype), v.to(q.dtype), acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    # epilogue: normalised partial out and its natural-log lse; nothing seen -> out 0, lse -inf
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    tl.store(O_PART + (row[:, None] * S + split) * HEAD_DIM + offs_d[None, :], out.to(O_PART.dtype.element_ty),
             mask=r_ok[:, None] & d_ok[None, :])
    tl.store(LSE_PART + row * S + split, lse, mask=r_ok)
    ### END SOLUTION


# ---------------------------------------------------------------------------
# Launch configuration, from benchmarks/kv_quant_gpu.py --sweep on an H200 (bfloat16 q,
# H = 32, Hkv = 8, D = 128, key groups of 128 tokens; median of 3 timings):
#     BLOCK_N / warps / stages   B=1 T=64k int8   int4     B=8 T=32k int8   int4
#     64 / 4 / 3                 82.5 us          96.6     278              341
#     64 / 4 / 4                 86.0             97.9     284              342
#     128 / 4 / 3                98.7             117      314              373
#     128 / 8 / 3 (L10's)        92.4             109      305              380
# L10's tile (128 keys, 8 warps) is not the best here: a tile is also unpacked and
# dequantized in registers, and 64-key tiles on 4 warps keep more programs per SM to
# hide that arithmetic behind the loads. A 64-key tile still lies in one 128-token
# key group. The interpreter runs 16-key tiles to keep CPU tests fast.
# ---------------------------------------------------------------------------
GPU_CONFIG = dict(BLOCK_N=64, num_warps=4, num_stages=3)
INTERPRETER_CONFIG = dict(BLOCK_N=16, num_warps=1, num_stages=1)
# Fold the statistics into the other operand where a tile allows it (FOLD_K: a key tile inside one group;
# FOLD_V: one value group per token): q . (c s + z) = (q * s) . c + q . z, so the (BLOCK_N, D) tile needs only
# its codes converted, and the scales touch the much smaller query / probability tile. Off by default: the
# plain path is the lesson's; benchmarks/kv_quant_gpu.py times both (the "_fold" rows).
FOLD_STATISTICS = False


def _check_quantized(name, x, dim, what):
    """x a QuantizedTensor of a (B, Hkv, T, D) tensor grouped along `dim`, its fields consistent."""
    if not isinstance(x, QuantizedTensor):
        raise TypeError(f"{name} must be a QuantizedTensor (kv_quant.quantize), got {type(x).__name__}")
    if len(x.shape) != 4:
        raise ValueError(f"{name} must quantize a (batch, kv_heads, seq, head_dim) tensor, got shape {tuple(x.shape)}")
    if x.dim != dim:
        raise ValueError(f"{name} must be quantized {what} (dim={dim - 4} of (B, Hkv, T, D)), got dim={x.dim}")
    if x.bits not in SUPPORTED_BITS:
        raise ValueError(f"{name}.bits must be one of {SUPPORTED_BITS}, got {x.bits!r}")
    B, Hkv, T, D = x.shape
    codes_shape = (B, Hkv, T, math.ceil(D * x.bits / 8))
    groups = math.ceil(x.shape[dim] / max(x.group_size, 1))
    stats_shape = (B, Hkv, groups, D) if dim == 2 else (B, Hkv, T, groups)
    if not isinstance(x.codes, torch.Tensor) or x.codes.dtype != torch.uint8 or tuple(x.codes.shape) != codes_shape:
        got = (x.codes.dtype, tuple(x.codes.shape)) if isinstance(x.codes, torch.Tensor) else type(x.codes).__name__
        raise ValueError(f"{name}.codes must be uint8 {codes_shape} for {x.bits}-bit codes of {tuple(x.shape)}, "
                         f"got {got}")
    for field in ("scale", "zero"):
        t = getattr(x, field)
        check_tensor(f"{name}.{field}", t, dtypes=(torch.float16, torch.bfloat16, torch.float32))
        if tuple(t.shape) != stats_shape:
            raise ValueError(f"{name}.{field} must have shape {stats_shape} (groups of {x.group_size}), "
                             f"got {tuple(t.shape)}")
        if t.device != x.codes.device:
            raise ValueError(f"{name}.{field} is on {t.device} but {name}.codes is on {x.codes.device}")


def _check_inputs(q, k, v, kv_lens, scale, num_splits):
    check_tensor("q", q, dtypes=(torch.float16, torch.bfloat16, torch.float32))
    if q.dim() != 4:
        raise ValueError(f"q must be (batch, heads, seq, head_dim), got shape {tuple(q.shape)}")
    _check_quantized("k", k, 2, "per channel (groups along the tokens)")
    _check_quantized("v", v, 3, "per token (groups along the channels)")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v {tuple(v.shape)} must have k's shape {tuple(k.shape)} (this kernel needs Dv == D)")
    for name, x in (("k", k), ("v", v)):
        if x.scale.dtype != q.dtype or x.zero.dtype != q.dtype:
            raise TypeError(f"{name}'s scale and zero must have q's dtype {q.dtype} (the dtype the cache was "
                            f"quantized from), got {x.scale.dtype} and {x.zero.dtype}")
        if x.codes.device != q.device:
            raise ValueError(f"{name} is on {x.codes.device} but q is on {q.device}")
    (B, H, Lq, D), (Bk, Hkv, T, Dk) = q.shape, k.shape
    if Bk != B:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same batch")
    if Dk != D:
        raise ValueError(f"q and k must have the same head_dim, got q {D} and k {Dk}")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"q's {H} heads must be a multiple of k/v's {Hkv} heads (GQA groups)")
    if not 1 <= D <= 256:
        raise ValueError(f"head_dim must be in 1..256 for this kernel, got {D}")
    check_scale(scale)
    check_num_splits(num_splits)
    check_kv_lens(kv_lens, B, T, q.device)   # one host sync (the range of the lengths)
    check_triton_device(q, INTERPRETED)


def _stats(x):
    """scale and zero with a unit-stride last dim and ONE layout (the kernel takes one set of strides for both)."""
    scale, zero = contiguous_last(x.scale), contiguous_last(x.zero)
    if scale.stride() != zero.stride():
        scale, zero = scale.contiguous(), zero.contiguous()
    return scale, zero


def quantized_kv_bytes(k, v):
    """Bytes a decode step reads from the quantized cache: codes + scales + zero points of k and v."""
    return sum(x.codes.nbytes + x.scale.nbytes + x.zero.nbytes for x in (k, v))


def triton_quantized_decode_attention(q, k, v, kv_lens=None, scale=None, num_splits=None):
    """out, lse = attention of q (B, H, Lq, D) over a quantized cache k, v, dequantized in the kernel.

    k: QuantizedTensor of the keys (B, Hkv, T, D), quantize(keys, bits, dim=-2, group_size=Gk)
       (per channel); v: of the values, quantize(values, bits, dim=-1, group_size=Gv) (per
       token); bits 8, 4 or 2 each; scales and zeros in q's dtype.
    kv_lens (B,) int, scale, num_splits: as L10's triton_decode_attention. Returns out
    (B, H, Lq, D) in q's dtype, lse (B, H, Lq) float32 (natural log; out 0 and lse -inf for a
    row that sees no key). Equals attention over (dequantize(k), dequantize(v)) up to the
    rounding of q's dtype; merge with the residual window's (out, lse) by L10's merge_partials.
    """
    _check_inputs(q, k, v, kv_lens, scale, num_splits)
    q = q.contiguous()                                   # (B, H, Lq, D): tiny, usually contiguous already
    kc, vc = contiguous_last(k.codes), contiguous_last(v.codes)
    (ks, kz), (vs, vz) = _stats(k), _stats(v)
    kv_lens = kv_lens.contiguous() if kv_lens is not None else None
    B, H, Lq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    G = H // Hkv
    out = torch.empty_like(q)
    lse = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse

    config = INTERPRETER_CONFIG if INTERPRETED else GPU_CONFIG
    block_n = config["BLOCK_N"]
    if num_splits is None:
        num_splits = (INTERPRETER_SPLITS if q.device.type == "cpu"
                      else choose_num_splits(B, Hkv, T, _sm_count(q.device.index or 0)))
    # keys per split in whole tiles: every tile starts at a multiple of BLOCK_N (what K_ONE_GROUP relies on)
    chunk = max(block_n, triton.cdiv(triton.cdiv(T, num_splits), block_n) * block_n)
    block_m = max(16, min(MAX_BLOCK_M, triton.next_power_of_2(G * Lq)))
    block_d = max(16, triton.next_power_of_2(D))        # >= 16 for tl.dot; >= 4 bytes of 2-bit codes per row

    if num_splits == 1:
        o_part, lse_part = out, lse
    else:                # partials (B, H, Lq, S, D) and (B, H, Lq, S), float32, L10's layout for its merge
        part = torch.empty(B * H * Lq * num_splits * (D + 1), device=q.device, dtype=torch.float32)
        o_part, lse_part = part[:B * H * Lq * num_splits * D], part[B * H * Lq * num_splits * D:]

    grid = (num_splits, B * Hkv, triton.cdiv(G * Lq, block_m))
    _quantized_split_kernel[grid](
        q, kc, ks, kz, vc, vs, vz, kv_lens if kv_lens is not None else lse, o_part, lse_part,
        *kc.stride()[:3], *ks.stride()[:3], *vc.stride()[:3], *vs.stride()[:3],
        H, Hkv, Lq, T, num_splits, chunk,
        (1.0 / math.sqrt(D) if scale is None else float(scale)) * LOG2E.value,
        K_BITS=k.bits, K_BYTES=kc.shape[-1], K_GROUP=k.group_size, K_ONE_GROUP=k.group_size % block_n == 0,
        V_BITS=v.bits, V_BYTES=vc.shape[-1], V_GROUP=v.group_size, V_ONE_GROUP=v.group_size >= D,
        FOLD_K=FOLD_STATISTICS and k.group_size % block_n == 0, FOLD_V=FOLD_STATISTICS and v.group_size >= D,
        GROUP=G, HAS_LENS=kv_lens is not None, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=block_m,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **config)
    if num_splits > 1:   # L10's stage 2, unchanged: merge the S partials of every query row by their lse
        _merge_kernel[(B * H * Lq,)](o_part, lse_part, out, lse, num_splits, HEAD_DIM=D, BLOCK_D=block_d,
                                     BLOCK_S=triton.next_power_of_2(num_splits), num_warps=1 if INTERPRETED else 4)
    return out, lse
