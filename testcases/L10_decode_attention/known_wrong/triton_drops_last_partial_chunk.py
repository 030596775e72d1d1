"""Keys per split = floor(T / num_splits): the remainder of the last split is never read."""
MODULE = "decode_attention_triton"


def triton_decode_attention(q, k, v, kv_lens=None, scale=None, num_splits=None):
    """out, lse = attention of q (B, H, Lq, D) over the cache k, v (B, Hkv, T, D), split over the keys.

    kv_lens (B,) int: valid keys per row (None: all T); query i sits at
    kv_lens[b] - Lq + i, bottom-right causal. num_splits: None chooses it with
    choose_num_splits (from B, Hkv, T and the GPU's SM count; a fixed
    INTERPRETER_SPLITS on the CPU); an int forces it. Returns out (B, H, Lq, D)
    in q's dtype and lse (B, H, Lq) float32 (natural log; -inf and out 0 for a
    row that sees no key). A decode step calls this once per layer, so the
    launcher does little on the host: a few checks, two allocations, one or two
    launches (with kv_lens it also checks their range, one host sync).
    """
    _check_inputs(q, k, v, kv_lens, scale, num_splits)
    q = q.contiguous()                                   # (B, H, Lq, D): tiny, usually contiguous already
    k, v = contiguous_last(k), contiguous_last(v)      # the cache may be a strided view; D must be unit-stride
    kv_lens = kv_lens.contiguous() if kv_lens is not None else None  # the kernel reads KV_LENS[b] at offset b
    B, H, Lq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    G = H // Hkv
    out = torch.empty_like(q)                            # every element is written by the kernels
    lse = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse

    config = INTERPRETER_CONFIG if INTERPRETED else GPU_CONFIG
    block_n = config["BLOCK_N"]
    if num_splits is None:
        num_splits = (INTERPRETER_SPLITS if q.device.type == "cpu"
                      else choose_num_splits(B, Hkv, T, _sm_count(q.device.index or 0)))
    # keys per split, rounded up to whole tiles (so only a split's last tile is partial);
    # trailing splits may then be empty: they report lse -inf and merge to nothing
    chunk = max(1, T // num_splits)  # BUG: floor
    block_m = max(16, min(MAX_BLOCK_M, triton.next_power_of_2(G * Lq)))
    block_d = max(16, triton.next_power_of_2(D))

    if num_splits == 1:  # nothing to merge: stage 1 writes out and lse itself (same layout, S = 1)
        o_part, lse_part = out, lse
    else:                # partials (B, H, Lq, S, D) and (B, H, Lq, S), float32, in one allocation
        part = torch.empty(B * H * Lq * num_splits * (D + 1), device=q.device, dtype=torch.float32)
        o_part, lse_part = part[:B * H * Lq * num_splits * D], part[B * H * Lq * num_splits * D:]

    grid = (num_splits, B * Hkv, triton.cdiv(G * Lq, block_m))
    _split_kernel[grid](
        q, k, v, kv_lens if kv_lens is not None else lse, o_part, lse_part,  # lse: a dummy pointer without kv_lens
        *k.stride()[:3], *v.stride()[:3], H, Hkv, Lq, T, num_splits, chunk,
        (1.0 / math.sqrt(D) if scale is None else float(scale)) * LOG2E.value,
        GROUP=G, HAS_LENS=kv_lens is not None, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=block_m,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **config)
    if num_splits > 1:
        _merge_kernel[(B * H * Lq,)](o_part, lse_part, out, lse, num_splits, HEAD_DIM=D, BLOCK_D=block_d,
                                     BLOCK_S=triton.next_power_of_2(num_splits), num_warps=1 if INTERPRETED else 4)
    return out, lse
