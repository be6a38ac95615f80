"""Fourier-KArAt: attention whose row-softmax is replaced by a learnable low-rank Fourier-KAN operator.

Per head h, scores s = q k^T / sqrt(d) [T, T]; each row s_i in R^T goes through a Fourier KAN
phi: R^T -> R^r (r = 12) and a linear map W: R^r -> R^T, and the result weights the values:

    phi_h(s_i)_c = sum_j sum_{m=1..G} C0[h,j,m,c] cos(m s_ij) + C1[h,j,m,c] sin(m s_ij)
    A_i = W_h^T phi_h(s_i)
    o_i = sum_j A_ij v_j

Parameters cover `max_len` key positions, indexed by each key's position in its document (packed
rows: `positions`, derived from `segment_ids` when not given); a query sees only keys of its own
document, so a packed document is treated exactly as if it were alone. "blockwise" mode
gives every layer its own operator; "universal" shares one operator across all layers (call
`tie_universal_operators(model)` once after building the model). `operator="softmax"` is the
baseline with the same projections. `causal=True` drops keys j > i from phi's input and A's output
(and allows KV-cache decoding, `init_cache` / `decode`).
The operator materialises [B, H, T, 2, T, G] (about 2G times the score matrix): KArAt's known cost.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from layers import segments
from layers.attention import kv_cache
from layers.context import LayerContext
from layers.core import Linear, make_param
from layers.forward_flops import causal_context, forward_flops_per_token
from layers.kan.fourier_kan import fourier_kan_init
from layers.kan.functional import fourier_features

MODES = ("blockwise", "universal")
OPERATORS = ("fourier_kan", "softmax")
NORMALIZE = ("none", "l1")


def fourier_ka_operator(scores: jax.Array, coeffs: jax.Array, proj: jax.Array,
                        mask: jax.Array | None = None, normalize: str = "none") -> jax.Array:
  """Low-rank Fourier-KAN replacement of the row softmax.

  scores [B, H, T, S] (fp32); coeffs [H, 2, S, G, r] and proj [H, r, S] for key positions 0..S-1, or
  per row [B, H, 2, S, G, r] and [B, H, r, S] (the parameters of each key's position); mask [T, S] or
  [B, 1, T, S] bool or None -> attention weights [B, H, T, S] in fp32. normalize="l1" divides each row by
  its l1 norm over the visible keys (sum_j |A_ij| = 1, signs kept; an all-zero row stays zero).

  >>> causal = jnp.tril(jnp.ones((3, 3), bool))
  >>> w = fourier_ka_operator(jnp.zeros((1, 2, 3, 3)), jnp.ones((2, 2, 3, 4, 5)), jnp.ones((2, 5, 3)), causal)
  >>> w[0, 0].tolist()  # zero scores: cos features 1, sin 0; each visible key adds G * r = 20
  [[20.0, 0.0, 0.0], [40.0, 40.0, 0.0], [60.0, 60.0, 60.0]]
  """
  per_row = coeffs.ndim == 6
  feats = fourier_features(scores, coeffs.shape[-2])  # [B, H, T, 2, S, G]
  if mask is not None:
    feats = feats * mask[..., None, :, None]
  low = jnp.einsum("bhtcsg,bhcsgr->bhtr" if per_row else "bhtcsg,hcsgr->bhtr", feats,
                   coeffs.astype(jnp.float32))  # [B, H, T, r]
  weights = jnp.einsum("bhtr,bhrs->bhts" if per_row else "bhtr,hrs->bhts", low, proj.astype(jnp.float32))
  if mask is not None:
    weights = jnp.where(mask, weights, 0.0)
  if normalize == "l1":
    l1 = jnp.sum(jnp.abs(weights), axis=-1, keepdims=True)
    weights = weights / jnp.where(l1 > 0, l1, 1.0)
  return weights


class FourierKAOperator(nnx.Module):
  """Per-head parameters of the operator: coeffs [H, 2, max_len, G, r], proj [H, r, max_len]."""

  def __init__(self, n_heads: int, max_len: int, *, rank: int, grid_size: int, smooth_init: bool, init_gain: float,
               normalize: str, param_dtype, rngs: nnx.Rngs):
    init = fourier_kan_init(smooth_init)
    self.normalize = normalize

    def per_head_init(key, shape, dtype):
      return jax.vmap(lambda k: init(k, shape[1:], dtype))(jax.random.split(key, shape[0]))

    self.coeffs = make_param(per_head_init, rngs.params(), (n_heads, 2, max_len, grid_size, rank),
                             param_dtype, ("heads", None, None, None, None))
    # Each phi_c has unit variance at init (coefficient variance 1 / (max_len G) over max_len G cos-sin pairs), so
    # W ~ N(0, init_gain^2 / (max_len r)) gives Var[A_ij] = init_gain^2 / max_len: sum_j A_ij v_j starts at
    # init_gain times the scale of v, a near-identity residual block for a small gain (see experiments/karat.py).
    proj_init = nnx.initializers.normal(init_gain / math.sqrt(max_len * rank))
    self.proj = make_param(proj_init, rngs.params(), (n_heads, rank, max_len), param_dtype,
                           ("heads", None, None))

  def __call__(self, scores: jax.Array, mask: jax.Array | None,
               key_positions: jax.Array | None = None) -> jax.Array:  # [B, H, T, S]
    """key_positions [B, S]: each key's position in its document (None: 0..S-1). A position past
    max_len reads NaN parameters (loud, never clamped)."""
    if key_positions is None:
      S = scores.shape[-1]
      return fourier_ka_operator(scores, self.coeffs[:, :, :S], self.proj[:, :, :S], mask, self.normalize)
    coeffs = jnp.take(self.coeffs[...], key_positions, axis=2, mode="fill", fill_value=jnp.nan)  # [H, 2, B, S, G, r]
    proj = jnp.take(self.proj[...], key_positions, axis=2, mode="fill", fill_value=jnp.nan)  # [H, r, B, S]
    return fourier_ka_operator(scores, jnp.moveaxis(coeffs, 2, 0), jnp.moveaxis(proj, 2, 0), mask,
                               self.normalize)


class KArAt(nnx.Module):
  """Fourier-KArAt token mixer (bidirectional by default, as in the ViT it was proposed for).

  init_gain: sqrt(sum_j A_ij^2) at init, the scale of the operator's output relative to the values' (softmax's
  uniform average of N uncorrelated values: 1 / sqrt(N)); normalize="l1" divides each row of A by its l1 norm.
  """

  def __init__(self, ctx: LayerContext, *, max_len: int = 256, rank: int = 12, grid_size: int = 3,
               mode: str = "blockwise", operator: str = "fourier_kan", smooth_init: bool = False,
               init_gain: float = 0.05, normalize: str = "none", causal: bool = False, use_bias: bool = True,
               rngs: nnx.Rngs):
    if mode not in MODES or operator not in OPERATORS or normalize not in NORMALIZE:
      raise ValueError(f"mode must be one of {MODES}, operator one of {OPERATORS} and normalize one of "
                       f"{NORMALIZE}; got {mode!r}, {operator!r}, {normalize!r}")
    self.n_heads, self.head_dim, self.max_len = ctx.n_heads, ctx.head_dim, max_len
    self.mode, self.causal, self.dtype = mode, causal, ctx.dtype
    kw = dict(use_bias=use_bias, dtype=ctx.dtype, param_dtype=ctx.param_dtype, rngs=rngs)
    inner = ctx.n_heads * ctx.head_dim
    self.qkv = Linear(ctx.d_model, 3 * inner, axes=("embed", "heads"), **kw)
    self.o = Linear(inner, ctx.d_model, axes=("heads", "embed"), **kw)
    self.operator = (FourierKAOperator(ctx.n_heads, max_len, rank=rank, grid_size=grid_size,
                                       smooth_init=smooth_init, init_gain=init_gain, normalize=normalize,
                                       param_dtype=ctx.param_dtype, rngs=rngs)
                     if operator == "fourier_kan" else None)

  def flops_per_token(self, seq_len: int) -> float:
    """Projections, QK^T and AV over the (causal) context, and the operator on each score row:
    Fourier-KAN S -> r (2 x 2 S G r) then r -> S (2 r S), or a softmax (~5 S)."""
    ctx = causal_context(seq_len) if self.causal else seq_len
    total = forward_flops_per_token(self.qkv, seq_len) + forward_flops_per_token(self.o, seq_len)
    total += 4.0 * self.n_heads * self.head_dim * ctx
    if self.operator is None:
      return total + 5.0 * self.n_heads * ctx
    _, _, _, grid, rank = self.operator.coeffs.shape
    return total + self.n_heads * (4.0 * seq_len * grid * rank + 2.0 * rank * seq_len)

  def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:  # [B, T, D] -> 3 x [B, T, H, K]
    B, T, _ = x.shape
    return tuple(jnp.split(self.qkv(x).reshape(B, T, 3 * self.n_heads, self.head_dim), 3, axis=2))

  def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
              key_positions: jax.Array | None = None) -> jax.Array:
    """q [B, T, H, K], k / v [B, S, H, K], mask [T, S] or [B, 1, T, S] or None, key_positions [B, S]
    or None (0..S-1) -> projected output [B, T, D]."""
    B, T = q.shape[:2]
    scores = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32) * self.head_dim**-0.5
    if self.operator is None:
      weights = jax.nn.softmax(scores if mask is None else jnp.where(mask, scores, -jnp.inf), axis=-1)
    else:
      weights = self.operator(scores, mask, key_positions)
    o = jnp.einsum("bhts,bshk->bthk", weights.astype(self.dtype), v)
    return self.o(o.reshape(B, T, -1))

  def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:  # [B, T, D] -> [B, T, D]
    """Queries see the keys of their own document (only earlier ones when causal); the operator reads
    each key's parameters at its position in its document."""
    B, T = x.shape[:2]
    if T > self.max_len:
      raise ValueError(f"sequence length {T} exceeds KArAt max_len={self.max_len}")
    q, k, v = self._qkv(x)
    mask = jnp.tril(jnp.ones((T, T), bool)) if self.causal else None
    if segment_ids is None and positions is None:
      return self._attend(q, k, v, mask)
    if segment_ids is not None:
      segments.check_segment_ids(segment_ids, (B, T))
      doc = segments.document_index(segment_ids)
      same = (doc[:, :, None] == doc[:, None, :])[:, None]  # [B, 1, T, T]
      mask = same if mask is None else same & mask
    key_positions = jnp.broadcast_to(segments.forward_positions(T, segment_ids, positions), (B, T))
    return self._attend(q, k, v, mask, key_positions)

  def init_cache(self, batch_size: int, max_len: int) -> dict:
    """A KV cache of max_len slots (layers.attention.kv_cache): keys and values [B, max_len, H, K]."""
    if max_len > self.max_len:
      raise ValueError(f"decoding {max_len} positions exceeds KArAt max_len={self.max_len}; raise max_len")
    return kv_cache.init_kv_cache(batch_size, max_len, self.n_heads, self.head_dim, self.dtype)

  def decode(self, x: jax.Array, cache: dict, pos: jax.Array, *, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """x [B, T, D] at slots pos..pos+T-1; each token sees the cached keys of its document up to
    itself, as in the causal forward (the operator indexed by the keys' positions in their document)."""
    if not self.causal:
      raise NotImplementedError("token-by-token decoding needs a causal KArAt (causal=True)")
    d = segments.decode_documents(cache["cursor"], x.shape[1], segment_ids, positions)
    q, k, v = self._qkv(x)
    cache, visible = kv_cache.append(cache, k, v, pos, d)
    return self._attend(q, cache["k"], cache["v"], visible, cache["position"]), cache


def tie_universal_operators(model: nnx.Module) -> None:
  """Make every universal-mode KArAt layer in `model` use the first one's operator (shared params)."""
  layers = [node for _, node in nnx.iter_graph(model)
            if isinstance(node, KArAt) and node.mode == "universal" and node.operator is not None]
  for layer in layers[1:]:
    layer.operator = layers[0].operator
