"""Packed rows: `segment_ids` [B, T] marks which document each token belongs to.

A change of id between neighbouring tokens starts a new document (equal ids that are not
contiguous are still two documents: nothing can resume a document once another one has begun).
Shared by the ops (linear attention, softmax attention) so they all read segment ids the same way.
"""

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
  return jnp.concatenate([jnp.zeros_like(change[:, :1]), change], axis=1)


def document_index(segment_ids: jax.Array) -> jax.Array:
  """[B, T] int -> [B, T] int32: 0 for the row's first document, +1 at every document start."""
  return jnp.cumsum(document_starts(segment_ids), axis=1, dtype=jnp.int32)
