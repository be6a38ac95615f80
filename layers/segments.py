"""Packed rows: `segment_ids` [B, T] marks which document each token belongs to.

A change of id between neighbouring tokens starts a new document (equal ids that are not
contiguous are still two documents: nothing can resume a document once another one has begun).
Shared by the ops (linear attention, softmax attention) so they all read segment ids the same way,
and by the mixers for per-document positions and for decoding packed prompts.

Decoding: a mixer's cache carries a cursor, the document of the last token it was fed
({"segment": id, "position": its position in the document, "document": documents begun so far},
each [B] int32). `decode_documents` places the tokens of a decode call after it: a token continues
the cursor's document when its id equals the cursor's, else it starts a new one from empty state.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


def check_segment_ids(segment_ids: jax.Array, shape: tuple[int, int]) -> None:
  """Raise a clear error unless segment_ids is an integer array of shape [B, T] = `shape`."""
  if tuple(segment_ids.shape) != tuple(shape):
    raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)}, expected [B, T] = {tuple(shape)}: "
                     "one document id per token")
  if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise ValueError(f"segment_ids must be an integer array (int32), got dtype {segment_ids.dtype}; "
                     "cast with .astype(jnp.int32)")


def document_starts(segment_ids: jax.Array) -> jax.Array:
  """[B, T] int -> [B, T] bool: True where a token's id differs from the previous token's (never at t = 0)."""
  change = segment_ids[:, 1:] != segment_ids[:, :-1]  # [B, T-1]
  return jnp.concatenate([jnp.zeros((segment_ids.shape[0], 1), bool), change], axis=1)  # also for T = 1


def document_index(segment_ids: jax.Array) -> jax.Array:
  """[B, T] int -> [B, T] int32: 0 for the row's first document, +1 at every document start."""
  return jnp.cumsum(document_starts(segment_ids), axis=1, dtype=jnp.int32)


def document_positions(segment_ids: jax.Array, first_position: jax.Array | None = None) -> jax.Array:
  """[B, T] int -> [B, T] int32: each token's position inside its document (0 at a document start).

  first_position [B]: the position of each row's first token (decoding a document that began in
  an earlier call); None: every row starts a document.

  >>> document_positions(jnp.array([[3, 3, 1, 1, 1, 3]])).tolist()
  [[0, 1, 0, 1, 2, 0]]
  """
  t = segment_ids.shape[1]
  idx = jnp.arange(t, dtype=jnp.int32)  # [T]
  origin = jnp.zeros(segment_ids.shape[:1], jnp.int32) if first_position is None else -first_position
  start = jax.lax.cummax(jnp.where(document_starts(segment_ids), idx, origin[:, None]), axis=1)  # [B, T]
  return idx - start


def forward_positions(t: int, segment_ids: jax.Array | None, positions: jax.Array | None) -> jax.Array:
  """The positions a mixer's forward uses: `positions` if given, else per-document positions from
  segment_ids ([B, T]), else 0..T-1 ([T])."""
  if positions is not None:
    return positions
  return jnp.arange(t, dtype=jnp.int32) if segment_ids is None else document_positions(segment_ids)


def init_cursor(batch_size: int) -> dict:
  """The cursor of an empty cache: no document yet (id -1, position -1, none begun)."""
  return {name: jnp.full((batch_size,), init, jnp.int32)
          for name, init in (("segment", -1), ("position", -1), ("document", 0))}


class DecodeDocuments(NamedTuple):
  """Where the T tokens of one decode call sit, relative to a cache's cursor."""

  segment_ids: jax.Array | None  # [B, T] as given; None: every token continues the cursor's document
  positions: jax.Array  # [B, T] int32 position of each token in its document
  documents: jax.Array  # [B, T] int32 running document number (KV caches mask by it)
  reset: jax.Array | None  # [B] bool: the first token starts a new document (restart state, conv buffers)
  cursor: dict  # the cursor after the call: the last token's document


def decode_documents(cursor: dict, t: int, segment_ids: jax.Array | None,
                     positions: jax.Array | None) -> DecodeDocuments:
  """Place T tokens after `cursor`. segment_ids [B, T] (None: all continue the cursor's document);
  positions [B, T] (None: derived, counting on from the cursor's position)."""
  b = cursor["segment"].shape[0]
  if segment_ids is None:
    reset, starts = None, jnp.zeros((b, t), bool)
    seg = jnp.broadcast_to(cursor["segment"][:, None], (b, t))
  else:
    check_segment_ids(segment_ids, (b, t))
    seg = segment_ids.astype(jnp.int32)
    reset = seg[:, 0] != cursor["segment"]  # [B]
    starts = document_starts(seg).at[:, 0].set(reset)
  if positions is None:
    first = jnp.where(starts[:, 0], 0, cursor["position"] + 1)
    positions = document_positions(seg, first)
  positions = positions.astype(jnp.int32)
  documents = cursor["document"][:, None] + jnp.cumsum(starts, axis=1, dtype=jnp.int32)
  new = {"segment": seg[:, -1], "position": positions[:, -1], "document": documents[:, -1]}
  return DecodeDocuments(segment_ids, positions, documents, reset, new)


def restart(tree, reset: jax.Array | None):
  """Zero every leaf ([B, ...]) of `tree` in the rows where `reset` [B] is True (None: unchanged)."""
  if reset is None:
    return tree
  return jax.tree.map(lambda a: jnp.where(reset.reshape(-1, *([1] * (a.ndim - 1))), jnp.zeros_like(a), a), tree)
