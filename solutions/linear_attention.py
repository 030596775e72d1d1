"""L13 — Linear attention: phi(Q) (phi(K)^T V), in parallel, recurrent and chunked form.

Softmax attention weighs value j for query i by exp(q_i·k_j) / sum_l exp(q_i·k_l).
Replace exp(q·k) by a kernel that factorises, sim(q, k) = phi(q)·phi(k) with a
feature map phi: R^D -> R^D that is non-negative (Katharopoulos et al. 2020 use
phi(x) = elu(x) + 1). Causal attention then reads

    out_i = sum_{j<=i} (phi(q_i)·phi(k_j)) v_j  /  sum_{j<=i} phi(q_i)·phi(k_j)
          = phi(q_i)^T S_i  /  phi(q_i)·z_i,
    S_i = sum_{j<=i} phi(k_j) v_j^T   (D, Dv),      z_i = sum_{j<=i} phi(k_j)   (D,)

The product (phi(Q) phi(K)^T) V costs O(L^2 D); by associativity it equals
phi(Q) (phi(K)^T V), which costs O(L D Dv) and never builds an (L, L) matrix.
Three ways to compute the same numbers, each an exercise:

- linear_attention: the definition, the (Lq, Lk) matrix of phi(q)·phi(k), masked
  and normalised by its row sums: O(L^2), the reference the others must match.
- linear_attention_recurrent: one token at a time, carrying the state (S, z).
  The state's size, D·Dv + D per head, does not grow with L: this is the form
  for decoding, a "KV cache" of constant size.
- linear_attention_chunked: chunks of C tokens. Inside a chunk the quadratic
  form (a (C, C) matrix); across chunks the state. O(L·C·D + L·D·Dv) work, and
  matrix products instead of a length-L Python loop.

Shapes (course-wide letters): q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv);
state S (B, H, D, Dv) and z (B, H, D).

Conventions (tutorial/CONVENTIONS.md):
- The normaliser has `eps` added: out_i = phi(q_i)^T S_i / (phi(q_i)·z_i + eps).
  Every form adds the same eps at the same place, so they agree exactly.
- causal=True aligns bottom-right as the rest of the course: query i of Lq sits
  at position i + Lk - Lq and sees keys j <= i + Lk - Lq. The recurrent and
  chunked forms are causal self-attention (Lq == Lk).
- Half-precision inputs: feature maps, products, sums and the state in float32;
  the output in the input dtype. float64 stays float64 (the state too).
- feature_map=None means elu_feature_map. A feature map is any function
  (..., D) -> (..., D') applied to q and k alike (D' may differ from D).

Exercises: elu_feature_map, linear_attention, linear_attention_recurrent,
linear_attention_chunked; advanced: decayed_linear_attention_recurrent.
"""
import numbers

import torch
import torch.nn.functional as F

from ._checks import check_positive_int, check_qkv, compute_dtype


def elu_feature_map(x):
    """phi(x) = elu(x) + 1, elementwise: positive everywhere (> 0), ~x + 1 for x > 0,
    exp(x) for x < 0. x any float tensor -> same shape and dtype."""
    ### BEGIN SOLUTION
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return F.elu(x) + 1.0  # elu(x) = x for x > 0, exp(x) - 1 below: the +1 makes every feature positive
    ### END SOLUTION


def _check_common(q, k, v, feature_map, eps):
    """Shape, dtype and argument checks shared by every form (given)."""
    check_qkv(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, L, D), got shape {tuple(t.shape)}")
    if feature_map is not None and not callable(feature_map):
        raise TypeError(f"feature_map must be callable or None, got {type(feature_map).__name__}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")


def _check_self_attention(q, k):
    """The recurrent and chunked forms are causal self-attention: Lq == Lk (given)."""
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"this form is causal self-attention: q and k need the same length, "
                         f"got q {tuple(q.shape)} and k {tuple(k.shape)}")


def _features(q, k, feature_map):
    """phi(q), phi(k) in the compute dtype (float32 for half inputs), checked (given)."""
    work = compute_dtype(q.dtype)
    phi = elu_feature_map if feature_map is None else feature_map
    phi_q, phi_k = phi(q.to(work)), phi(k.to(work))
    for name, t, x in (("feature_map(q)", phi_q, q), ("feature_map(k)", phi_k, k)):
        if not isinstance(t, torch.Tensor) or t.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"{name} must keep every dim but the last of {tuple(x.shape)}, "
                             f"got {getattr(t, 'shape', type(t).__name__)}")
    if phi_q.shape[-1] != phi_k.shape[-1]:
        raise ValueError(f"feature_map gave q {phi_q.shape[-1]} and k {phi_k.shape[-1]} features; they must match")
    return phi_q.to(work), phi_k.to(work)


def linear_attention(q, k, v, causal=True, feature_map=None, eps=1e-6):
    """The definition: out = (A ⊙ M) v / ((A ⊙ M) 1 + eps), A = phi(q) phi(k)^T.

    q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) -> (B, H, Lq, Dv) in q's dtype.
    M is the bottom-right causal mask when causal (query i sees keys
    j <= i + Lk - Lq), all ones otherwise. O(Lq·Lk) memory: the reference form.
    causal must be a bool (TypeError otherwise).
    """
    ### BEGIN SOLUTION
    _check_common(q, k, v, feature_map, eps)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    phi_q, phi_k = _features(q, k, feature_map)                  # (B, H, Lq, D'), (B, H, Lk, D')
    scores = phi_q @ phi_k.transpose(-2, -1)                     # (B, H, Lq, Lk): phi(q_i)·phi(k_j)
    if causal:
        Lq, Lk = q.shape[-2], k.shape[-2]
        visible = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril(Lk - Lq)  # j <= i + Lk - Lq
        scores = scores.masked_fill(~visible, 0.0)               # a hidden key has weight 0 (not -inf!)
    numerator = scores @ v.to(scores.dtype)                      # (B, H, Lq, Dv)
    denominator = scores.sum(dim=-1, keepdim=True) + eps         # (B, H, Lq, 1): phi(q_i)·z_i + eps
    return (numerator / denominator).to(q.dtype)
    ### END SOLUTION


def linear_attention_recurrent(q, k, v, state=None, feature_map=None, eps=1e-6):
    """Causal linear attention one token at a time, from (and returning) a state.

    q, k (B, H, L, D), v (B, H, L, Dv), L >= 0 new tokens; state = (S, z) with
    S (B, H, D', Dv) = sum_j phi(k_j) v_j^T and z (B, H, D') = sum_j phi(k_j) over
    every earlier token (None: no earlier token, zeros). For t = 0..L-1:

        S <- S + phi(k_t) v_t^T;   z <- z + phi(k_t);   out_t = phi(q_t)^T S / (phi(q_t)·z + eps)

    Returns (out (B, H, L, Dv) in q's dtype, (S, z)) with the state in float32
    (float64 for float64 inputs). The input state is not modified in place.
    """
    ### BEGIN SOLUTION
    _check_common(q, k, v, feature_map, eps)
    _check_self_attention(q, k)
    phi_q, phi_k = _features(q, k, feature_map)          # (B, H, L, D')
    B, H, L, Df = phi_k.shape
    Dv, work = v.shape[-1], phi_k.dtype
    S, z = _check_state(state, (B, H, Df, Dv), work, q.device)
    v = v.to(work)
    outs = []
    for t in range(L):
        S = S + phi_k[:, :, t, :, None] * v[:, :, t, None, :]          # (B, H, D', 1) * (B, H, 1, Dv): outer product
        z = z + phi_k[:, :, t]                                          # (B, H, D')
        numerator = torch.einsum("bhd,bhde->bhe", phi_q[:, :, t], S)    # phi(q_t)^T S: (B, H, Dv)
        denominator = (phi_q[:, :, t] * z).sum(-1, keepdim=True) + eps  # phi(q_t)·z + eps: (B, H, 1)
        outs.append(numerator / denominator)
    out = torch.stack(outs, dim=2) if outs else v.new_zeros(B, H, 0, Dv)
    return out.to(q.dtype), (S, z)
    ### END SOLUTION


def _check_state(state, expected_s, dtype, device):
    """Validate an incoming state (S, z), or make a zero one (given)."""
    B, H, Df, Dv = expected_s
    if state is None:
        return (torch.zeros(B, H, Df, Dv, dtype=dtype, device=device),
                torch.zeros(B, H, Df, dtype=dtype, device=device))
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(f"state must be None or a pair (S, z), got {type(state).__name__}")
    S, z = state
    for name, t, shape in (("state S", S, (B, H, Df, Dv)), ("state z", z, (B, H, Df))):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape} for these q, k, v")
    return S.to(device=device, dtype=dtype), z.to(device=device, dtype=dtype)


def linear_attention_chunked(q, k, v, chunk_size=64, feature_map=None, eps=1e-6):
    """Causal linear attention in chunks of `chunk_size` tokens (the last may be shorter).

    q, k (B, H, L, D), v (B, H, L, Dv) -> (B, H, L, Dv) in q's dtype, equal to
    linear_attention(q, k, v, causal=True). For a chunk c of queries and keys:

        out_c = [ tril(phi(q_c) phi(k_c)^T) v_c + phi(q_c) S ]  /  [ tril(...) 1 + phi(q_c) z + eps ]

    with (S, z) the state of every earlier chunk; then S += phi(k_c)^T v_c and
    z += sum of phi(k_c). O(L·C·D' + L·D'·Dv) work; never an (L, L) tensor.
    """
    ### BEGIN SOLUTION
    _check_common(q, k, v, feature_map, eps)
    check_positive_int("chunk_size", chunk_size)
    _check_self_attention(q, k)
    phi_q, phi_k = _features(q, k, feature_map)          # (B, H, L, D')
    B, H, L, Df = phi_k.shape
    Dv, work = v.shape[-1], phi_k.dtype
    v = v.to(work)
    S = torch.zeros(B, H, Df, Dv, dtype=work, device=q.device)   # sum of phi(k_j) v_j^T over earlier chunks
    z = torch.zeros(B, H, Df, dtype=work, device=q.device)       # sum of phi(k_j) over earlier chunks
    outs = []
    for start in range(0, L, chunk_size):                        # covers a last, shorter chunk
        end = min(start + chunk_size, L)
        fq, fk, vc = phi_q[:, :, start:end], phi_k[:, :, start:end], v[:, :, start:end]  # (B, H, C, .)
        # -- inside the chunk: the quadratic form, causal (key j <= query i within the chunk) --
        local = (fq @ fk.transpose(-2, -1)).tril()               # (B, H, C, C)
        numerator = local @ vc + fq @ S                          # (B, H, C, Dv): this chunk + all earlier ones
        denominator = local.sum(-1, keepdim=True) + (fq @ z[..., None]) + eps  # (B, H, C, 1)
        outs.append(numerator / denominator)
        # -- across chunks: fold this chunk into the state --
        S = S + fk.transpose(-2, -1) @ vc                        # (B, H, D', C) @ (B, H, C, Dv)
        z = z + fk.sum(dim=2)                                    # (B, H, D')
    out = torch.cat(outs, dim=2) if outs else v.new_zeros(B, H, 0, Dv)
    return out.to(q.dtype)
    ### END SOLUTION


def decayed_linear_attention_recurrent(q, k, v, decay, state=None, feature_map=None, eps=1e-6):
    """Advanced: linear attention whose memory fades, S_t = decay · S_{t-1} + phi(k_t) v_t^T.

    The same as linear_attention_recurrent, with the state (S and z alike)
    multiplied by `decay` before each token is added, so token j weighs
    decay^(t - j) at step t (RetNet's and gated linear attention's idea, with a
    fixed gate). decay: a float in (0, 1], or a tensor (H,) of per-head decays
    in (0, 1]. decay = 1 is linear_attention_recurrent exactly.
    Returns (out (B, H, L, Dv) in q's dtype, (S, z)).
    """
    ### BEGIN SOLUTION
    _check_common(q, k, v, feature_map, eps)
    _check_self_attention(q, k)
    H = q.shape[1]
    if isinstance(decay, torch.Tensor):
        if decay.shape != (H,):
            raise ValueError(f"decay must be a float or a tensor (H,) = ({H},), got shape {tuple(decay.shape)}")
        if not bool(((decay > 0) & (decay <= 1)).all()):
            raise ValueError(f"decay must lie in (0, 1], got {decay.tolist()}")
    elif isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0 < decay <= 1:
        raise ValueError(f"decay must be a float in (0, 1] or a tensor (H,), got {decay!r}")
    phi_q, phi_k = _features(q, k, feature_map)
    B, _, L, Df = phi_k.shape
    Dv, work = v.shape[-1], phi_k.dtype
    S, z = _check_state(state, (B, H, Df, Dv), work, q.device)
    gamma = torch.as_tensor(decay, dtype=work, device=q.device).reshape(-1)  # (1,) or (H,)
    gamma_s, gamma_z = gamma.view(1, -1, 1, 1), gamma.view(1, -1, 1)       # broadcast over (B, H, ...)
    v = v.to(work)
    outs = []
    for t in range(L):
        S = gamma_s * S + phi_k[:, :, t, :, None] * v[:, :, t, None, :]    # fade, then add the new token
        z = gamma_z * z + phi_k[:, :, t]
        numerator = torch.einsum("bhd,bhde->bhe", phi_q[:, :, t], S)
        denominator = (phi_q[:, :, t] * z).sum(-1, keepdim=True) + eps
        outs.append(numerator / denominator)
    out = torch.stack(outs, dim=2) if outs else v.new_zeros(B, H, 0, Dv)
    return out.to(q.dtype), (S, z)
    ### END SOLUTION
