"""Causal softmax attention within non-overlapping blocks (TransNormer's DiagAttention), as a pure function.

Block j of a document holds its tokens at positions [j W, (j + 1) W); a token attends causally to the
tokens of its own block only, so every query sees at most W keys and the cost is linear in T. Blocks
restart with every document of a packed row (they follow the per-document positions), so a document
packed into a row gives exactly what it gives alone.

Fast form: the row is cut into chunks of W; a token's block begins at most W - 1 positions before it,
so chunk n's queries only need the keys of chunks n - 1 and n ([W, 2W] scores per chunk, never [T, T]).
"""

import jax
import jax.numpy as jnp

from layers import segments
from layers.linear_attention.ops.common import pad_time


def block_index(positions: jax.Array, block_size: int, segment_ids: jax.Array | None = None) -> jax.Array:
  """[B, T] (or [T]) positions -> [B, T] int32 running block number: +1 at each token that starts a
  document or sits at a multiple of block_size in its document.

  >>> block_index(jnp.array([[0, 1, 2, 3, 0, 1]]), 2, jnp.array([[5, 5, 5, 5, 6, 6]])).tolist()
  [[0, 0, 1, 1, 2, 2]]
  """
  positions = jnp.atleast_2d(positions)
  starts = (positions % block_size == 0).at[:, 0].set(False)
  if segment_ids is not None:
    starts = starts | segments.document_starts(segment_ids)
  return jnp.cumsum(starts, axis=1, dtype=jnp.int32)


def check_arguments(q, k, v, block_size: int, segment_ids) -> None:
  """A clear ValueError for bad shapes, block_size or segment_ids; shared with the sequence-parallel form."""
  if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
    raise ValueError(f"q, k must be [B, T, H, K] and v [B, T, H, V] with equal B, T, H; got shapes "
                     f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
  if block_size < 1:
    raise ValueError(f"block_size must be >= 1, got {block_size}")
  if segment_ids is not None:
    segments.check_segment_ids(segment_ids, tuple(q.shape[:2]))


def block_softmax_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  block_size: int,
  positions: jax.Array | None = None,
  segment_ids: jax.Array | None = None,
  scale: float | None = None,
) -> jax.Array:
  """o_t = sum_s softmax_s(scale q_t . k_s) v_s over the s <= t in t's block (and document).

  q, k [B, T, H, K]; v [B, T, H, V]; positions [B, T] or [T] int (each token's position in its document;
  None: derived from segment_ids, or 0..T-1); segment_ids [B, T] int (packed documents). block_size W:
  blocks are [j W, (j + 1) W) in document positions. scale defaults to K**-0.5. Scores and softmax in
  fp32 whatever the input dtype; returns o [B, T, H, V] in q's dtype.

  Example (blocks of 2: token 2 starts a block and sees only itself):
    >>> q = k = jnp.ones((1, 4, 1, 8)); v = jnp.arange(4.0).reshape(1, 4, 1, 1)
    >>> block_softmax_attention(q, k, v, block_size=2)[0, :, 0, 0].tolist()
    [0.0, 0.5, 2.0, 2.5]
  """
  check_arguments(q, k, v, block_size, segment_ids)
  b, t, h, dk = q.shape
  positions = segments.forward_positions(t, segment_ids, positions)
  w = block_size
  scale = dk**-0.5 if scale is None else scale
  ids = jnp.broadcast_to(block_index(positions, w, segment_ids), (b, t))
  ids = jnp.pad(ids, [(0, 0), (0, -t % w)], constant_values=-1)  # padded steps form no real block
  n = ids.shape[1] // w

  def chunks(x):  # [B, T, ...] -> [B, N, W, ...]
    x = pad_time(x, w)
    return x.reshape(b, n, w, *x.shape[2:])

  def with_previous(x, fill):  # [B, N, W, ...] -> [B, N, 2W, ...]: chunk n - 1 then chunk n
    prev = jnp.concatenate([jnp.full_like(x[:, :1], fill), x[:, :-1]], axis=1)
    return jnp.concatenate([prev, x], axis=2)

  qc = chunks(q.astype(jnp.float32) * scale)  # [B, N, W, H, K]
  kc = with_previous(chunks(k.astype(jnp.float32)), 0.0)  # [B, N, 2W, H, K]
  vc = with_previous(chunks(v.astype(jnp.float32)), 0.0)  # [B, N, 2W, H, V]
  q_ids = ids.reshape(b, n, w)  # [B, N, W]
  k_ids = with_previous(q_ids, -2)  # [B, N, 2W]; -2: no chunk before the first
  causal = jnp.arange(2 * w)[None, :] <= jnp.arange(w)[:, None] + w  # key j precedes (or is) query i
  visible = (q_ids[..., :, None] == k_ids[..., None, :]) & causal  # [B, N, W, 2W]; each sees itself
  scores = jnp.einsum("bnihk,bnjhk->bnhij", qc, kc)
  probs = jax.nn.softmax(jnp.where(visible[:, :, None], scores, -jnp.inf), axis=-1)
  o = jnp.einsum("bnhij,bnjhv->bnihv", probs, vc).reshape(b, n * w, h, v.shape[-1])
  return o[:, :t].astype(q.dtype)
