"""Sequence (context) parallelism: the time axis of activations split over the mesh axis "sequence".

With a mesh axis "sequence" of size R > 1 (set with `jax.set_mesh`), every [B, T, ...] activation is
cut into R contiguous slices of T / R tokens, slice r on the devices at position r of that axis. Per-token
layers (projections, norms, feed-forwards, the loss) need nothing more. A layer that mixes tokens across
time runs its mixing inside `jax.shard_map` manual over "sequence" and the batch rows (`Split`; heads on
"tensor" stay with the compiler, so it composes with data / fsdp / tensor / expert) and exchanges what
crosses slice boundaries:
  linear attention:   one all-gather of per-slice state summaries (layers.linear_attention.sequence_parallel)
  short convolutions, token shifts: the previous slice's last W-1 inputs (`with_halo`, one collective-permute)
  softmax and forgetting attention: K/V all-gathered or passed round a ring (layers.attention.sequence_parallel)
  block-local softmax (diag_attention): the block_size - 1 keys / values before the slice (`preceding`, a halo)
Packed documents stay exact: `boundaries` says which slices begin with a new document and numbers the
documents globally, from one all-gather of four ints per row and slice. A layer without such a hook is
still exact under the mesh (the compiler gathers what it needs), only not sequence-parallel.
Positions (RoPE): give them with the batch, as packed batches carry them; derived from segment_ids under
the mesh, the compiler all-gathers the [B, T] ids once per forward (`document_positions` derives them inside a
layer's shard_map from the boundaries instead).

T must be a multiple of R (`check_length`): slices are never padded, because padding one layer's input
would shift every later token; pick data.seq_len as a multiple of mesh.shape.sequence.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from layers import segments

AXIS = "sequence"
TENSOR_AXIS = "tensor"
REPLICATED = P()


def active_mesh():
  """The mesh set with `jax.set_mesh` if it has a "sequence" axis of size > 1, else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.shape.get(AXIS, 1) <= 1:
    return None
  return mesh


def check_length(t: int, mesh, what: str) -> int:
  """The slice length T / R; a clear error unless T is a multiple of the "sequence" axis size R."""
  shards = mesh.shape[AXIS]
  if t % shards:
    raise ValueError(f"{what}: sequence length T={t} is not a multiple of the {AXIS!r} mesh axis ({shards} shards); "
                     f"use a length that is (e.g. data.seq_len={math.ceil(t / shards) * shards}) or change "
                     f"mesh.shape.{AXIS}")
  return t // shards


class Split(NamedTuple):
  """How a layer's shard_map splits its arrays: T over "sequence" and the batch rows over `rows`, every mesh
  axis but "tensor" and "sequence" (expert parallelism's and splash attention's convention for the batch),
  when they divide B. Both are manual inside; "tensor" (heads) stays with the compiler. Leaving the rows
  with the compiler instead would make it gather every row into the collectives over "sequence"."""

  mesh: jax.sharding.AbstractMesh
  rows: tuple[str, ...]

  @property
  def time(self) -> P:  # [B, T, ...]
    return P(self.rows or None, AXIS)

  @property
  def batch(self) -> P:  # [B, ...], one per row (states)
    return P(self.rows or None)

  @property
  def slices(self) -> P:  # [R, B, ...], one per slice and row
    return P(AXIS, self.rows or None)


def split(batch: int) -> Split | None:
  """The Split for B = `batch` rows under the active mesh; None without a "sequence" axis."""
  mesh = active_mesh()
  if mesh is None:
    return None
  rows = tuple(a for a in mesh.axis_names if a not in (AXIS, TENSOR_AXIS) and mesh.shape[a] > 1)
  return Split(mesh, rows if batch % math.prod(mesh.shape[a] for a in rows) == 0 else ())


def shard_map(fn: Callable, split: Split, in_specs, out_specs) -> Callable:
  """`fn` on the local slices (and rows), manual over "sequence" and split.rows."""
  return jax.shard_map(fn, mesh=split.mesh, in_specs=in_specs, out_specs=out_specs,
                       axis_names={AXIS, *split.rows})


def varying(x: jax.Array) -> jax.Array:
  """x (the same on every device, e.g. a constant) typed as differing between them, as a scan carry that
  meets per-device values must be (inside `shard_map`); its transpose sums over the devices."""
  manual = jax.sharding.get_abstract_mesh().manual_axes
  missing = tuple(a for a in manual if a not in jax.typeof(x).mat.varying)
  return jax.lax.pcast(x, missing, to="varying") if missing else x


class Boundaries(NamedTuple):
  """Where documents cross slice boundaries, seen from inside the shard_map (one all-gather)."""

  starts: jax.Array  # [R, B] bool: slice r's first token starts a new document (never for r = 0)
  offset: jax.Array  # [B] int32: global document index (layers.segments.document_index) of this slice's first token
  position: jax.Array  # [B] int32: position in its document (layers.segments.document_positions) of that token

  def here(self) -> jax.Array:
    """[B] bool: this slice's first token starts a new document."""
    return self.starts[jax.lax.axis_index(AXIS)]


def boundaries(segment_ids: jax.Array) -> Boundaries:
  """Boundaries for the local slice of segment_ids [B, T/R] (call inside `shard_map`)."""
  local = segment_ids.shape[1]
  inside = segments.document_index(segment_ids)[:, -1]  # [B] documents begun inside the slice
  last_inside = jnp.max(jnp.where(segments.document_starts(segment_ids), jnp.arange(local), -1), axis=1)  # [B]
  ids = jnp.stack([segment_ids[:, 0], segment_ids[:, -1], inside, last_inside], axis=-1).astype(jnp.int32)  # [B, 4]
  every = jax.lax.all_gather(ids, AXIS)  # [R, B, 4]
  previous_last = jnp.concatenate([every[:1, :, 0], every[:-1, :, 1]], axis=0)  # [R, B]; row 0: its own first
  starts = every[:, :, 0] != previous_last  # [R, B]
  begun = jnp.cumsum(starts.astype(jnp.int32) + every[:, :, 2], axis=0)  # [R, B] documents begun up to slice end
  r = jax.lax.axis_index(AXIS)
  # The row index of the last document start up to each slice's end (0: the row's first token), then of the
  # start of slice r's first document: the last one before slice r, or slice r's first token itself.
  first = jnp.arange(every.shape[0])[:, None] * local  # [R, 1] row index of each slice's first token
  last_start = jnp.maximum(jnp.where(starts, first, 0), jnp.where(every[:, :, 3] >= 0, first + every[:, :, 3], 0))
  before = jnp.max(jnp.where(jnp.arange(every.shape[0])[:, None] < r, last_start, 0), axis=0)  # [B]
  start = jnp.where(starts[r], r * local, before)
  return Boundaries(starts, begun[r] - every[r, :, 2], r * local - start)


def document_positions(segment_ids: jax.Array) -> jax.Array:
  """[B, T/R] local slice of segment_ids -> [B, T/R] int32 positions in their documents, as
  layers.segments.document_positions gives them over the whole row (call inside `shard_map`; one all-gather of
  four int32 per row and slice)."""
  return segments.document_positions(segment_ids, boundaries(segment_ids).position)


def preceding(tree, width: int):
  """The `width` steps before this slice (call inside `shard_map`): for each leaf [B, L, ...] of `tree` (this
  slice), [B, width, ...] taken from the previous slices, zeros before the row's first token.
  ceil(width / L) collective-permutes (one when width <= L), of at most [B, min(width, L), ...] each."""
  local = jax.tree.leaves(tree)[0].shape[1]
  shards = jax.sharding.get_abstract_mesh().shape[AXIS]

  def piece(x, back: int):  # the last steps of slice r - back that fall within `width`
    tail = x[:, local - min(local, width - (back - 1) * local):]
    pairs = [(i, i + back) for i in range(shards - back)]  # no slice that far back: zeros
    return jax.lax.ppermute(tail, AXIS, pairs) if pairs else varying(jnp.zeros_like(tail))

  parts = [jax.tree.map(functools.partial(piece, back=back), tree)
           for back in range(math.ceil(width / local), 0, -1)]  # the furthest slice first
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *parts)


def with_halo(fn: Callable, x: jax.Array, args: tuple, segment_ids: jax.Array | None, width: int):
  """fn(x, *args, halo, segment_ids) on each slice, halo [B, width, C] the `width` inputs before the slice
  that belong to its first token's document (zeros before the row's start or a document start).

  x [B, T, C] and segment_ids [B, T] (or None) are split over "sequence"; args are replicated. Every output
  of fn is concatenated over the slices along axis 1. One collective-permute of [B, width, C] (and the
  boundary all-gather with segment_ids). Needs T / R >= width.
  """
  where = split(x.shape[0])
  local = check_length(x.shape[1], where.mesh, "short convolution")
  if local < width:
    raise ValueError(f"short convolution: {local} tokens per {AXIS!r} shard are fewer than the {width} inputs the "
                     f"kernel reaches back; use fewer shards (mesh.shape.{AXIS}) or a longer sequence")

  def body(x, args, segment_ids):
    tail = x[:, local - width:]  # [B, width, C]
    if segment_ids is not None:  # only the last document's inputs continue into the next slice
      doc = segments.document_index(segment_ids)
      tail = jnp.where((doc[:, local - width:] == doc[:, -1:])[..., None], tail, 0)
    halo = preceding(tail, width)  # slice 0 receives zeros
    if segment_ids is not None:
      halo = jnp.where(boundaries(segment_ids).here()[:, None, None], 0, halo)
    return fn(x, *args, halo, segment_ids)

  return shard_map(body, where, (where.time, REPLICATED, where.time), where.time)(x, args, segment_ids)
