"""Forgetting attention (the Forgetting Transformer's softmax attention with a forget gate) as a pure function:
an exact blockwise (flash-style) form whose memory is linear in T, and the quadratic reference."""

import functools

import jax
import jax.numpy as jnp

from layers import segments
from layers.attention.softmax_attention import check_arguments

MODES = ("blockwise", "quadratic")
F32 = jnp.float32
_BLOCK_MULTIPLE = 16  # a sequence shorter than block_size is one block of T rounded up to this


def forgetting_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  g: jax.Array,
  *,
  scale: float | None = None,
  window: int | None = None,
  segment_ids: jax.Array | None = None,
  mode: str = "blockwise",
  block_size: int = 128,
) -> jax.Array:
  """Causal softmax attention whose logits decay by the forget gates between key and query (Lin et al.,
  "Forgetting Transformer: Softmax Attention with a Forget Gate", ICLR 2025).

  o_i = sum_{j<=i} softmax_j(scale q_i . k_j + sum_{j<s<=i} g_s) v_j,  i.e. with c = cumsum(g) over time the
  logits are scale q_i . k_j + c_i − c_j (<= scale q_i . k_j: a forget gate only ever down-weights the past).
  q [B, T, H, K]; k [B, T, Hkv, K]; v [B, T, Hkv, V] with H a multiple of Hkv (GQA: query head h reads kv head
  h // (H / Hkv)); g [B, T, H] log forget gate <= 0 per query head and step (FoX: log σ(w·x + b));
  segment_ids [B, T] int (packed documents: i sees only its own document, as in softmax_attention);
  window=W: only the last W positions, itself included. scale defaults to K**-0.5.
  Scores, gate cumsum (over the whole row, in fp32) and softmax in fp32 whatever the input dtype; returns
  o [B, T, H, V] in q's dtype. mode: "blockwise" (the fast form for training: online softmax over key blocks
  of block_size, custom backward that recomputes the blocks, memory linear in T, compute T·min(T, W)),
  "quadratic" (the reference: the full [T, T] logits, memory T²).

  Example (g = 0 is causal softmax attention; two documents in one row):
    >>> q = k = v = jnp.ones((1, 4, 2, 8)).at[:, :2].set(2.0); g = jnp.full((1, 4, 2), -1.0)
    >>> o = forgetting_attention(q, k, v, g, segment_ids=jnp.array([[0, 0, 1, 1]]))
    >>> o.shape, float(o[0, 2, 0, 0])
    ((1, 4, 2, 8), 1.0)
  """
  check_arguments(q, k, v, True, window, segment_ids)
  b, t, h, dk = q.shape
  if tuple(g.shape) != (b, t, h):
    raise ValueError(f"g has shape {tuple(g.shape)}, expected [B, T, H] = {(b, t, h)}: one log forget gate per "
                     "query head and step")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if block_size < 1:
    raise ValueError(f"block_size must be positive, got {block_size}")
  scale = dk**-0.5 if scale is None else scale
  group = h // k.shape[2]
  q32 = q.astype(F32) * scale
  k32, v32 = (jnp.repeat(x.astype(F32), group, axis=2) for x in (k, v))  # [B, T, H, K|V]
  c = jnp.cumsum(g.astype(F32), axis=1)  # [B, T, H]
  doc = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segments.document_index(segment_ids)
  if mode == "quadratic":
    o = _quadratic(q32, k32, v32, c, doc, window)
  else:
    size = min(block_size, -(-t // _BLOCK_MULTIPLE) * _BLOCK_MULTIPLE)
    n = -(-t // size)
    pad = n * size - t
    padded = [jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), mode=m)
              for x, m in ((q32, "constant"), (k32, "constant"), (v32, "constant"), (c, "edge"), (doc, "edge"))]
    blocks = [_to_blocks(x, size) for x in padded[:4]]  # [B, H, N, C, K|V], c [B, H, N, C]
    o = _blockwise(*blocks, padded[4].reshape(b, 1, n, size), window)  # padded steps: causally invisible
    o = jnp.moveaxis(o, 1, 3).reshape(b, n * size, h, -1)[:, :t]
  return o.astype(q.dtype)


def _quadratic(q, k, v, c, doc, window):
  """The reference: full logits [B, H, T, T] with the visibility mask, fp32 softmax."""
  t = q.shape[1]
  pos = jnp.arange(t)
  visible = (pos[:, None] >= pos[None, :]) & (doc[:, None, :, None] == doc[:, None, None, :])  # [B, 1, T, T]
  if window is not None:
    visible &= pos[:, None] - pos[None, :] < window
  cq = jnp.moveaxis(c, 1, 2)  # [B, H, T]
  logits = jnp.einsum("bihk,bjhk->bhij", q, k) + jnp.where(visible, cq[..., :, None] - cq[..., None, :], 0.0)
  weights = jax.nn.softmax(jnp.where(visible, logits, -jnp.inf), axis=-1)
  return jnp.einsum("bhij,bjhv->bihv", weights, v)


def _to_blocks(x: jax.Array, size: int) -> jax.Array:
  """[B, T, H, ...] -> [B, H, N, C, ...]."""
  b, t, h = x.shape[:3]
  return jnp.moveaxis(x.reshape(b, t // size, size, h, *x.shape[3:]), 3, 1)


def _offsets(n: int, size: int, window: int | None) -> int:
  """Block offsets d (query block I against key block I − d) that hold a visible pair: i − j <= W − 1 needs
  d·C − (C − 1) <= W − 1."""
  return n if window is None else min(n, (window - 2 + size) // size + 1)


def _visible(d: jax.Array, doc: jax.Array, doc_keys: jax.Array, window: int | None) -> jax.Array:
  """[B, 1, N, C, C] bool: query i = I·C + a sees key j = (I − d)·C + b (block I − d exists, j <= i, i − j < W,
  one document)."""
  n, size = doc.shape[2], doc.shape[3]
  gap = d * size + jnp.arange(size)[:, None] - jnp.arange(size)[None, :]  # i − j [C, C]
  keep = (gap >= 0) if window is None else (gap >= 0) & (gap < window)
  exists = (jnp.arange(n) >= d)[:, None, None]  # [N, 1, 1]
  return keep & exists & (doc[..., :, None] == doc_keys[..., None, :])


def _shifted(x: jax.Array, d: jax.Array) -> jax.Array:
  """x [B, H|1, N, ...] -> y with y[:, :, I] = x[:, :, I − d] (wrapped entries are masked by `_visible`)."""
  return jnp.roll(x, d, axis=2)


def _logits(q, k, c, d):
  """scale q_i . k_j + c_i − c_j for query block I and key block I − d: [B, H, N, C, C] (masked by the caller)."""
  return jnp.einsum("bhnik,bhnjk->bhnij", q, _shifted(k, d)) + c[..., :, None] - _shifted(c, d)[..., None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _blockwise(q, k, v, c, doc, window):
  """Flash-style forgetting attention on blocks: q, k [B, H, N, C, K], v [B, H, N, C, V], c [B, H, N, C] (gate
  cumsum), doc [B, 1, N, C] int -> o [B, H, N, C, V]. A scan over block offsets d = 0, 1, ... (all query blocks
  at once, each against key block I − d) keeps a running max m, normaliser l and output accumulator per query.
  Offset 0 holds every query's own key, so m is finite from the first step on."""
  return _blockwise_fwd(q, k, v, c, doc, window)[0]


def _blockwise_fwd(q, k, v, c, doc, window):
  n, size = q.shape[2], q.shape[3]

  def step(carry, d):
    m, l, acc = carry  # [B, H, N, C], [B, H, N, C], [B, H, N, C, V]
    visible = _visible(d, doc, _shifted(doc, d), window)
    s = jnp.where(visible, _logits(q, k, c, d), -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    p = jnp.exp(s - m_new[..., None])  # masked logits are -inf: p = 0
    alpha = jnp.exp(m - m_new)  # 0 at d = 0 (m = -inf), <= 1 after
    acc = alpha[..., None] * acc + jnp.einsum("bhnij,bhnjv->bhniv", p, _shifted(v, d))
    return (m_new, alpha * l + jnp.sum(p, axis=-1), acc), None

  init = (jnp.full(q.shape[:4], -jnp.inf, F32), jnp.zeros(q.shape[:4], F32), jnp.zeros(v.shape, F32))
  (m, l, acc), _ = jax.lax.scan(step, init, jnp.arange(_offsets(n, size, window)))
  o = acc / l[..., None]
  return o, (q, k, v, c, doc, o, m + jnp.log(l))


def _blockwise_bwd(window, residuals, do):
  """Recompute each block's probabilities p = exp(s − lse) and accumulate
  ds = p ⊙ (do·vᵀ − rowsum(do ⊙ o)), dq = ds k, dk = dsᵀ q, dv = pᵀ do, dc_i += sum_j ds_ij, dc_j −= sum_i ds_ij;
  key-side sums computed for query block I land on key block I − d."""
  q, k, v, c, doc, o, lse = residuals
  n, size = q.shape[2], q.shape[3]
  delta = jnp.sum(do * o, axis=-1)  # [B, H, N, C]

  def step(carry, d):
    dq, dk, dv, dc = carry
    visible = _visible(d, doc, _shifted(doc, d), window)
    p = jnp.exp(jnp.where(visible, _logits(q, k, c, d) - lse[..., None], -jnp.inf))  # [B, H, N, C, C]
    ds = p * (jnp.einsum("bhniv,bhnjv->bhnij", do, _shifted(v, d)) - delta[..., None])
    dq = dq + jnp.einsum("bhnij,bhnjk->bhnik", ds, _shifted(k, d))
    dk = dk + _shifted(jnp.einsum("bhnij,bhnik->bhnjk", ds, q), -d)
    dv = dv + _shifted(jnp.einsum("bhnij,bhniv->bhnjv", p, do), -d)
    dc = dc + jnp.sum(ds, axis=-1) - _shifted(jnp.sum(ds, axis=-2), -d)
    return (dq, dk, dv, dc), None

  init = (jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v), jnp.zeros_like(c))
  (dq, dk, dv, dc), _ = jax.lax.scan(step, init, jnp.arange(_offsets(n, size, window)))
  return dq, dk, dv, dc, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)
