"""What every linear-attention op shares: argument checks, dtype policy, mode dispatch, chunking,
document masks for packed rows.

Dtype policy: whatever the input dtype, the ops compute in float32 (states, gate cumsums, every
matmul) and return `o` in the dtype of `q`; the final state is always float32.
Padding: per-step inputs are zero-padded to a multiple of the chunk size. Zeros are neutral for
every op (k = 0 and beta = 0 write nothing, a log gate of 0 decays nothing), so the state after the
padded steps equals the state after step T; padded steps join the row's last document.
Packed rows (`segment_ids` [B, T]): a document start zeroes the state before its first step, so no
document sees another; `initial_state` seeds the row's first document and the final state is the
state at the end of the row's last document. The recurrent forms zero the state at each start; the
chunk forms mask with `ChunkDocuments` (exact: masks, never large negative gates).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from layers import segments

MODES = ("recurrent", "chunk", "parallel")
F32 = jnp.float32
# "parallel" runs the chunk form with one chunk covering the whole (padded) sequence.
_PARALLEL_MULTIPLE = 16


def check_shape(name: str, x: jax.Array, shape: tuple[int, ...]) -> None:
  if tuple(x.shape) != tuple(shape):
    raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")


def run(
  recurrent: Callable,
  chunk: Callable,
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  per_step: tuple[jax.Array, ...],
  *,
  scale: float | None,
  initial_state: jax.Array | None,
  output_final_state: bool,
  mode: str,
  chunk_size: int,
  segment_ids: jax.Array | None,
) -> tuple[jax.Array, jax.Array | None]:
  """Check shapes, cast to fp32, scale q, dispatch on mode, pad/crop T, cast o back.

  `recurrent(q, k, v, *per_step, s0, starts)` and `chunk(q, k, v, *per_step, s0, docs, chunk_size)` take
  fp32 arrays [B, T, H, ...] (for `chunk`, T is a multiple of chunk_size) and return (o, final_state);
  starts [B, T] bool marks document starts (None: one document per row), docs is `chunk_documents`.
  `per_step` holds the gate / beta arrays whose leading dims are [B, T, H].
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if q.ndim != 4:
    raise ValueError(f"q must be [B, T, H, K], got shape {tuple(q.shape)}")
  b, t, h, dk = q.shape
  dv = v.shape[-1]
  check_shape("k", k, q.shape)
  check_shape("v", v, (b, t, h, dv))
  for x in per_step:
    if tuple(x.shape[:3]) != (b, t, h):
      raise ValueError(f"gate / beta shape {tuple(x.shape)} must start with [B, T, H] = {(b, t, h)}")
  if initial_state is None:
    s0 = jnp.zeros((b, h, dk, dv), F32)
  else:
    check_shape("initial_state", initial_state, (b, h, dk, dv))
    s0 = initial_state.astype(F32)
  if segment_ids is not None:
    segments.check_segment_ids(segment_ids, (b, t))
  scale = dk**-0.5 if scale is None else scale
  q32, k32, v32 = q.astype(F32) * scale, k.astype(F32), v.astype(F32)
  steps = tuple(x.astype(F32) for x in per_step)

  if mode == "recurrent":
    starts = None if segment_ids is None else segments.document_starts(segment_ids)
    o, st = recurrent(q32, k32, v32, *steps, s0, starts)
  else:
    if mode == "chunk":
      if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
      size = min(chunk_size, _round_up(t, _PARALLEL_MULTIPLE))
    else:
      size = _round_up(t, _PARALLEL_MULTIPLE)
    padded = [pad_time(x, size) for x in (q32, k32, v32, *steps)]
    doc = None if segment_ids is None else pad_time(segments.document_index(segment_ids), size, mode="edge")
    o, st = chunk(*padded, s0, chunk_documents(doc, padded[0].shape[1] // size, size), size)
    o = o[:, :t]
  return o.astype(q.dtype), (st if output_final_state else None)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def pad_time(x: jax.Array, multiple: int, mode: str = "constant") -> jax.Array:
  """Pad axis 1 (time) of x [B, T, ...] to a multiple of `multiple` (zeros, or "edge": repeat the last step)."""
  extra = _round_up(x.shape[1], multiple) - x.shape[1]
  if extra == 0:
    return x
  return jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2), mode=mode)


def to_chunks(x: jax.Array, size: int) -> jax.Array:
  """[B, T, H, ...] -> [B, H, N, C, ...] with C = size, N = T / C."""
  b, t, h = x.shape[:3]
  x = x.reshape(b, t // size, size, h, *x.shape[3:])
  return jnp.moveaxis(x, 3, 1)


def from_chunks(x: jax.Array) -> jax.Array:
  """[B, H, N, C, ...] -> [B, N*C, H, ...]."""
  b, h, n, c = x.shape[:4]
  return jnp.moveaxis(x, 1, 3).reshape(b, n * c, h, *x.shape[4:])


def masked_exp(diff: jax.Array, mask: jax.Array) -> jax.Array:
  """exp(diff) where mask, exactly 0 elsewhere; masked-out entries never reach exp (no inf, no NaN grads)."""
  return jnp.exp(jnp.where(mask, diff, -jnp.inf))


def scan_time(
  step: Callable, s0: jax.Array, xs: tuple[jax.Array, ...], starts: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
  """Run `step(state, x_t) -> (state, o_t)` over time; xs are [B, T, H, ...], o is [B, T, H, V].

  starts [B, T] bool (None: one document per row): the state is zeroed before each step that starts
  a document, so every document runs from a zero state (the first from s0).
  """
  def body(s, x):  # s [B, H, K, V]
    start_t, x_t = x
    if start_t is not None:
      s = jnp.where(start_t[:, None, None, None], 0.0, s)
    return step(s, x_t)

  time_major = tuple(jnp.moveaxis(x, 1, 0) for x in xs)
  st, o = jax.lax.scan(body, s0, (None if starts is None else starts.T, time_major))
  return jnp.moveaxis(o, 0, 1), st


class ChunkDocuments(NamedTuple):
  """Documents of a packed row cut into N chunks of C steps (broadcast over heads).

  The chunk forms use them as: intra-chunk scores only within a document (`same_document` of `doc`);
  the state entering a chunk reaches only the document that continues from before it (`first`); only
  the chunk's last document writes the next state (`last`); the entering state carries over only when
  no document starts inside the chunk (`carry`). With one document per row they are constants.
  """
  doc: jax.Array  # [B, 1, N, C] int32: document index of each step (non-decreasing along the row)
  first: jax.Array  # [B, 1, N, C, 1] fp32: 1 where step t continues the document of the entering state
  last: jax.Array  # [B, 1, N, C, 1] fp32: 1 where step t is in the chunk's last document
  carry: jax.Array  # [B, 1, N, 1] fp32: 1 where no document starts inside the chunk


def chunk_documents(doc: jax.Array | None, n: int, size: int) -> ChunkDocuments:
  """ChunkDocuments for document indices doc [B, N*C] (0 first, +1 per document; None: one document)."""
  if doc is None:
    one = jnp.ones((1, 1, 1, 1, 1), F32)
    return ChunkDocuments(jnp.zeros((1, 1, 1, size), jnp.int32), one, one, jnp.ones((1, 1, n, 1), F32))
  d = doc.reshape(doc.shape[0], 1, n, size)  # [B, 1, N, C]
  end = d[..., -1]  # [B, 1, N]: document of the chunk's last step
  enter = jnp.concatenate([d[..., :1, 0], end[..., :-1]], axis=-1)  # [B, 1, N]: document of the entering state
  return ChunkDocuments(
    doc=d,
    first=(d == enter[..., None]).astype(F32)[..., None],
    last=(d == end[..., None]).astype(F32)[..., None],
    carry=(end == enter).astype(F32)[..., None],
  )


def same_document(rows: jax.Array, cols: jax.Array) -> jax.Array:
  """[..., R] and [..., S] document indices -> [..., R, S] bool: step pairs within one document."""
  return rows[..., :, None] == cols[..., None, :]


def scan_chunk_states(s0: jax.Array, decay: jax.Array, update: jax.Array) -> tuple[jax.Array, jax.Array]:
  """States entering each chunk for S_n+1 = decay_n * S_n + U_n (elementwise decay, broadcast over V).

  s0 [B, H, K, V]; decay [B, H, N, K] or [B, H, N, 1] (B, H may be 1); update [B, H, N, K, V].
  Returns (states entering chunk n [B, H, N, K, V], final state [B, H, K, V]).
  """
  def step(s, x):
    d, u = x
    return d[..., None] * s + u, s

  xs = (jnp.moveaxis(decay, 2, 0), jnp.moveaxis(update, 2, 0))
  st, starts = jax.lax.scan(step, s0, xs)
  return jnp.moveaxis(starts, 0, 2), st
