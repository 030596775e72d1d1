"""The loop runs over the whole table width (every sequence as long as the longest) and a -1 entry is read as block 0:
slots past seq_len and other blocks' keys are attended."""
MODULE = "paged_attention_triton"


@triton.jit
def _paged_split_kernel(Q, K_PAGES, V_PAGES, BLOCK_TABLES, SEQ_LENS, O_PART, LSE_PART,
                        stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_bt,
                        H, Hkv, S, chunk, qk_scale,
                        GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        DOT_PRECISION: tl.constexpr):
    """Partial attention of the query rows [row0, row0 + BLOCK_M) of KV group (s, hkv)
    over the tokens [split * chunk, (split + 1) * chunk) that exist for sequence s.

    q is contiguous (S, H, D): query head h of sequence s starts at (s * H + h) * D.
    The partials are contiguous (S, H, num_splits, D) and (S, H, num_splits): L10's
    layout with Lq = 1, so L10's merge kernel reads them, and with one split they
    are exactly out (S, H, D) and lse (S, H). Token t of sequence s is key row
    t % BLOCK_SIZE of physical block BLOCK_TABLES[s * stride_bt + t // BLOCK_SIZE]."""
    split = tl.program_id(0)
    off_skv = tl.program_id(1)
    off_s = off_skv // Hkv                                       # which sequence
    off_hkv = off_skv % Hkv                                      # which KV head of it
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM                                     # padding columns when D is not a power of 2
    # -- this KV head's slice of every block: key row r of block p at base + p * stride_kb + r * stride_kn --
    k_head = K_PAGES + off_hkv.to(tl.int64) * stride_kh
    v_head = V_PAGES + off_hkv.to(tl.int64) * stride_vh
    table = BLOCK_TABLES + off_s.to(tl.int64) * stride_bt        # this sequence's row of the block table

    # -- which query rows this tile holds: row r is head hkv * G + r (the interleaved GQA map, as
    #    repeat_interleave: heads hkv*G .. hkv*G + G - 1 share KV head hkv) --
    offs_r = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    r_ok = offs_r < GROUP                                        # padding rows of the tile (G < 16)
    off_h = off_hkv * GROUP + offs_r                             # (BLOCK_M,) query head of each row
    row = off_s.to(tl.int64) * H + off_h                         # (BLOCK_M,) index of (s, h) in (S, H)

    # -- this sequence's length and the token range of this split --
    seq_len = tl.load(SEQ_LENS + off_s).to(tl.int32)             # tokens t >= seq_len do not exist
    lo = split * chunk
    hi = tl.minimum(lo + chunk, stride_bt * BLOCK_SIZE)  # BUG: the table's width, not seq_len

    # -- q stays in registers for the whole loop: (BLOCK_M, BLOCK_D), read once --
    q = tl.load(Q + row[:, None] * HEAD_DIM + offs_d[None, :], mask=r_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                 # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)        # running sum of exp2(s - m_i) v

    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0                               # (BLOCK_N,) logical token positions
        n_ok = offs_n < hi                                       # past seq_len (or the split): never read
        # -- the indirection: logical block t // BLOCK_SIZE -> physical block, from the table.
        #    Masked: a -1 padding entry (past the last block) is never loaded, and never used --
        block = tl.maximum(tl.load(table + offs_n // BLOCK_SIZE, mask=n_ok, other=0), 0)  # BUG: -1 -> block 0
        # -- where each key row starts: its block, then its offset in the block (int64: a pool of
        #    num_blocks * Hkv * BLOCK_SIZE * D elements can pass 2^31) --
        k_rows = block.to(tl.int64) * stride_kb + (offs_n % BLOCK_SIZE).to(tl.int64) * stride_kn
        v_rows = block.to(tl.int64) * stride_vb + (offs_n % BLOCK_SIZE).to(tl.int64) * stride_vn
        # -- load K (BLOCK_N, BLOCK_D) and V (BLOCK_N, BLOCK_D): the only HBM traffic that matters.
        #    Each row is D contiguous elements, as in L10: the loads stay wide and coalesced --
        k = tl.load(k_head + k_rows[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_head + v_rows[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        # -- qk = q k^T * scale * log2(e): (BLOCK_M, D) @ (D, BLOCK_N) -> (BLOCK_M, BLOCK_N) --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        qk = tl.where(n_ok[None, :], qk, float("-inf"))          # the masked keys (loaded as 0) do not exist
        # -- online softmax: new max; a row that has seen nothing yet keeps -inf, guarded to 0 --
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)    # exp2(-inf - (-inf)) would be NaN
        p = tl.math.exp2(qk - m_safe[:, None])                   # (BLOCK_M, BLOCK_N), 0 where masked
        alpha = tl.math.exp2(m_i - m_safe)                       # rescales the old sums; 0 when m_i = -inf
        l_i = l_i * alpha + tl.sum(p, 1)
        # (BLOCK_M, BLOCK_N) @ (BLOCK_N, D) -> (BLOCK_M, D); P rounded to V's dtype, as in FlashAttention
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    # epilogue: normalised partial out and its natural-log lse; nothing seen -> out 0, lse -inf
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    tl.store(O_PART + (row[:, None] * S + split) * HEAD_DIM + offs_d[None, :], out.to(O_PART.dtype.element_ty),
             mask=r_ok[:, None] & d_ok[None, :])
    tl.store(LSE_PART + row * S + split, lse, mask=r_ok)
