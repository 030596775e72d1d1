"""L09 — Rotary position embeddings (RoPE) and RMSNorm.

Attention by itself is blind to order: permute the keys and values together and
every output stays the same. RoPE (Su et al., RoFormer, 2021) puts the position
into q and k by ROTATING them. Split a head of D dims into D/2 pairs; pair i is
a point in a plane, turned by the angle p * theta_i at position p:

    theta_i = base^(-2i/D),   i = 0 .. D/2 - 1        (base = 10000 in Llama 1/2)

    [x'_i      ]   [cos(p theta_i)  -sin(p theta_i)] [x_i      ]
    [x'_{i+D/2}] = [sin(p theta_i)   cos(p theta_i)] [x_{i+D/2}]

A rotation keeps lengths and composes by adding angles, R(a)^T R(b) = R(b - a),
so for a query rotated to position p and a key rotated to position j

    (R(p) q) . (R(j) k) = q^T R(p)^T R(j) k = q^T R(j - p) k

depends on the positions only through p - j: attention scores become relative
without a single learned position parameter.

Layout (tutorial/CONVENTIONS.md; Hugging Face / GPT-NeoX "rotate-half"): dims i
and i + D/2 form pair i. With cos, sin of shape (..., L, D) built as
cat(freqs, freqs), the rotation above is, for all pairs at once,

    apply_rope(x) = x * cos + rotate_half(x) * sin,
    rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]).

Meta's original Llama code pairs ADJACENT dims (2i, 2i + 1) instead ("interleaved",
torch.view_as_complex); the two are the same model only after permuting the rows
of W_q and W_k. Mixing them up gives a model that runs and is wrong.

RMSNorm (Zhang & Sennrich, 2019) is LayerNorm without the mean and the bias:

    RMSNorm(x) = weight * x / sqrt(mean(x^2) + eps)

its statistic in float32 for half-precision inputs (as Hugging Face's LlamaRMSNorm).

Exercises: rope_cos_sin, rotate_half, apply_rope, RMSNorm.__init__/forward.
"""
import numbers

import torch
import torch.nn as nn

from ._checks import FLOAT_DTYPES, check_positive_int, check_tensor, compute_dtype


def rope_cos_sin(positions, head_dim, base=10000.0, dtype=torch.float32):
    """The cos and sin tables of RoPE for integer positions.

    positions: an integer tensor (..., L) of absolute token positions (any
      leading dims: (L,), (1, L) or one row per sequence (B, L)).
    Returns cos, sin: (..., L, head_dim) each, in `dtype`, with
        theta_i = base^(-2i / head_dim),  i = 0 .. head_dim/2 - 1
        freqs = positions[..., None] * theta          (..., L, head_dim/2): the angles p * theta_i
        cos = cos(cat(freqs, freqs)), sin = sin(cat(freqs, freqs))
    so column i and column i + head_dim/2 hold the same angle (rotate-half layout).
    The angles are computed in float32 (float64 when dtype is float64) and only
    the finished cos and sin are cast to dtype: a half-precision angle at
    position 3000 is off by whole radians.
    Errors: positions not an integer tensor (TypeError naming positions);
    head_dim not a positive EVEN int (ValueError/TypeError naming head_dim);
    base not a real number > 0 (naming base); dtype not a floating dtype (naming dtype).
    """
    ### BEGIN SOLUTION
    if not isinstance(positions, torch.Tensor) or positions.is_floating_point() or positions.is_complex() \
            or positions.dtype == torch.bool:
        got = getattr(positions, "dtype", type(positions).__name__)
        raise TypeError(f"positions must be an integer tensor (..., L) of token positions, got {got}")
    check_positive_int("head_dim", head_dim)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even (RoPE rotates pairs of dims), got {head_dim}")
    if isinstance(base, bool) or not isinstance(base, numbers.Real) or not base > 0:
        raise ValueError(f"base must be a real number > 0, got {base!r}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be a floating dtype, got {dtype!r}")
    work = torch.float64 if dtype == torch.float64 else torch.float32  # never half: see the docstring
    exponent = torch.arange(0, head_dim, 2, device=positions.device, dtype=work) / head_dim  # (D/2,): 2i/D
    theta = 1.0 / (base ** exponent)  # (D/2,): theta_i = base^(-2i/D), from 1 down to ~1/base
    freqs = positions.to(work)[..., None] * theta  # (..., L, 1) * (D/2,) -> (..., L, D/2): angle p * theta_i
    emb = torch.cat((freqs, freqs), dim=-1)  # (..., L, D): dims i and i + D/2 share angle i
    return emb.cos().to(dtype), emb.sin().to(dtype)
    ### END SOLUTION


def rotate_half(x):
    """cat(-x[..., D/2:], x[..., :D/2]) for x (..., D) with D even.

    Pair i is (x_i, x_{i+D/2}); rotate_half sends it to (-x_{i+D/2}, x_i), the
    point turned by 90 degrees, so x * cos + rotate_half(x) * sin turns it by
    the angle. x: a float tensor with an even last dim (ValueError naming x).
    """
    ### BEGIN SOLUTION
    check_tensor("x", x)
    if x.shape[-1] % 2:
        raise ValueError(f"x must have an even last dim (pairs i and i + D/2), got shape {tuple(x.shape)}")
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # (..., D/2) each: first and second members of the pairs
    return torch.cat((-x2, x1), dim=-1)
    ### END SOLUTION


def apply_rope(x, cos, sin):
    """Rotate x by the angles of cos and sin: x * cos + rotate_half(x) * sin.

    x: (B, H, L, D) queries or keys; cos, sin: (L, D), (B, L, D) or anything
    that broadcasts against x once a head axis is added: (B, L, D) becomes
    (B, 1, L, D), the same angles for every head. Returns x's shape and dtype
    (cos and sin are cast to x's dtype, as Hugging Face does).
    Errors: x not a float tensor of >= 2 dims with an even last dim (naming x);
    cos and sin of different shapes, or a last dim other than x's (naming cos/sin);
    shapes that do not broadcast (ValueError naming cos).
    """
    ### BEGIN SOLUTION
    check_tensor("x", x, min_dim=2)
    for name, t in (("cos", cos), ("sin", sin)):
        check_tensor(name, t, min_dim=2)
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have the same shape, got cos {tuple(cos.shape)} and sin {tuple(sin.shape)}")
    if cos.shape[-1] != x.shape[-1]:
        raise ValueError(f"cos has last dim {cos.shape[-1]} but x has head_dim {x.shape[-1]} (x {tuple(x.shape)})")
    if cos.dim() == 3 and x.dim() == 4:
        cos, sin = cos[:, None], sin[:, None]  # (B, L, D) -> (B, 1, L, D): one angle per position, every head
    try:
        torch.broadcast_shapes(cos.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"cos of shape {tuple(cos.shape)} does not broadcast to x of shape {tuple(x.shape)}") from None
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin  # pair i turned by its angle: (x_i c - x_{i+D/2} s, x_{i+D/2} c + x_i s)
    ### END SOLUTION


class RMSNorm(nn.Module):
    """RMSNorm(dim, eps=1e-6): y = weight * x / sqrt(mean(x^2 over the last dim) + eps).

    weight: nn.Parameter of shape (dim,), initialised to ones (no bias, no mean
    subtracted: that is LayerNorm). forward(x) for x (..., dim): the mean of
    squares and the division in float32 for half-precision x (float64 stays
    float64), cast back to x's dtype BEFORE the multiply by weight (Hugging
    Face's LlamaRMSNorm order). dim a positive int, eps a real >= 0 (ValueError
    naming it); x with last dim other than dim raises ValueError naming x.
    """

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        ### BEGIN SOLUTION
        check_positive_int("dim", dim)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
            raise ValueError(f"eps must be a real number >= 0, got {eps!r}")
        self.dim, self.eps = dim, float(eps)
        self.weight = nn.Parameter(torch.ones(dim))
        ### END SOLUTION

    def forward(self, x):
        ### BEGIN SOLUTION
        check_tensor("x", x)
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has last dim {x.shape[-1]}, expected dim={self.dim} (x {tuple(x.shape)})")
        work = x.to(compute_dtype(x.dtype))  # half -> float32: squares of |x| > 256 overflow float16
        mean_square = work.pow(2).mean(dim=-1, keepdim=True)  # (..., 1): mean(x^2), no mean subtracted
        normed = work * torch.rsqrt(mean_square + self.eps)  # (..., dim)
        return self.weight * normed.to(x.dtype)
        ### END SOLUTION

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"
