"""Moving tokens to experts and back: capacity buffers (with dropping) and dropless sorted groups.

Capacity (GShard / Switch): each expert has C slots. Assignments take slots in priority order
(all first choices before any second choice, then token order); an assignment that finds its
expert full is dropped (its weight is zeroed, the residual stream carries the token on).
Buffers are [E, C, D], so any expert function can be vmapped over experts.

Dropless (MegaBlocks-style, in JAX): the N*k assignments are sorted by expert, giving E
contiguous groups of sizes `group_sizes`; expert matmuls are one `jax.lax.ragged_dot` each, or
(tiles) each group is padded to a multiple of a tile and every tile is one dense matmul with its
expert's weights (block-diagonal, at most E * tile padding rows). Nothing is dropped. Rows past
sum(group_sizes) are padding of a static buffer (expert parallelism's receive buffer).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


def capacity(n_tokens: int, n_experts: int, top_k: int, factor: float) -> int:
  """Slots per expert: ceil(factor * N * k / E), at least 1 and at most N (an expert sees a token once)."""
  return max(1, min(n_tokens, math.ceil(factor * n_tokens * top_k / n_experts)))


class Slots(NamedTuple):
  position: jax.Array  # [N, k] int32 slot of each assignment in its expert's buffer
  kept: jax.Array  # [N, k] bool, False where the expert was full


def capacity_slots(experts: jax.Array, n_experts: int, capacity: int) -> Slots:
  """Slot positions for assignments experts [N, k] in priority order (choice rank, then token)."""
  n, k = experts.shape
  by_rank = experts.T.reshape(-1)  # [k*N]: all first choices, then all second choices, ...
  onehot = jax.nn.one_hot(by_rank, n_experts, dtype=jnp.int32)  # [k*N, E]
  position = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)  # [k*N]
  position = position.reshape(k, n).T
  return Slots(position, position < capacity)


def to_buffers(x: jax.Array, experts: jax.Array, slots: Slots, n_experts: int, capacity: int) -> jax.Array:
  """Scatter tokens x [N, D] into expert buffers [E, C, D]; dropped assignments are left out."""
  n, k = experts.shape
  rows = jnp.broadcast_to(x[:, None, :], (n, k, x.shape[-1]))
  position = jnp.where(slots.kept, slots.position, capacity)  # out of range -> dropped by the scatter
  buffers = jnp.zeros((n_experts, capacity, x.shape[-1]), x.dtype)
  return buffers.at[experts, position].set(rows, mode="drop")


def from_buffers(y: jax.Array, experts: jax.Array, slots: Slots, weights: jax.Array) -> jax.Array:
  """Combine expert outputs y [E, C, D] to tokens: sum_k w_k y[e_k, pos_k], dropped count 0.  -> [N, D]"""
  position = jnp.where(slots.kept, slots.position, 0)
  rows = y[experts, position]  # [N, k, D]
  w = jnp.where(slots.kept, weights, 0.0).astype(y.dtype)
  return jnp.einsum("nk,nkd->nd", w, rows)


class Groups(NamedTuple):
  order: jax.Array  # [N*k] int32: assignment index (n*k + j) at each sorted position
  group_sizes: jax.Array  # [E] int32 assignments per expert
  expert_of_row: jax.Array  # [N*k] int32 expert of each sorted row


def sort_by_expert(experts: jax.Array, n_experts: int) -> Groups:
  """Stable sort of the assignments experts [N, k] by expert id."""
  flat = experts.reshape(-1)
  order = jnp.argsort(flat, stable=True).astype(jnp.int32)
  group_sizes = jnp.bincount(flat, length=n_experts).astype(jnp.int32)
  return Groups(order, group_sizes, flat[order])


def to_groups(x: jax.Array, groups: Groups, top_k: int) -> jax.Array:
  """Rows of x [N, D] in expert-sorted order.  -> [N*k, D]"""
  return x[groups.order // top_k]


def from_groups(y: jax.Array, groups: Groups, weights: jax.Array) -> jax.Array:
  """Undo the sort of y [N*k, D] and combine with weights [N, k].  -> [N, D]"""
  n, k = weights.shape
  unsorted = jnp.zeros_like(y).at[groups.order].set(y, unique_indices=True)
  return jnp.einsum("nk,nkd->nd", weights.astype(y.dtype), unsorted.reshape(n, k, -1))


def gather_tokens(x: jax.Array, tokens: jax.Array) -> jax.Array:
  """Expert-choice buffers: x [N, D], tokens [E, C] -> [E, C, D]."""
  return x[tokens]


def scatter_tokens(y: jax.Array, tokens: jax.Array, weights: jax.Array, n_tokens: int) -> jax.Array:
  """Expert-choice combine: out[n] = sum over (e, c) with tokens[e, c] = n of w[e, c] y[e, c].  -> [N, D]"""
  contrib = y * weights[..., None].astype(y.dtype)
  out = jnp.zeros((n_tokens, y.shape[-1]), y.dtype)
  return out.at[tokens.reshape(-1)].add(contrib.reshape(-1, y.shape[-1]))


class Tiles(NamedTuple):
  """Expert-sorted rows padded so every tile of `tile` rows belongs to one expert (block-sparse layout)."""

  destination: jax.Array  # [M] int32 padded row of each sorted row
  tile_expert: jax.Array  # [n_tiles] int32 expert of each tile
  tile: int


def tile_layout(groups: Groups, tile: int) -> Tiles:
  """Pad each expert group to a multiple of `tile` rows; n_tiles = ceil(M / tile) + E is a static bound.

  Rows past sum(group_sizes) (padding of a static buffer) get no tile: their destination is past the end.
  """
  m = groups.expert_of_row.shape[0]
  sizes = groups.group_sizes
  padded = (sizes + tile - 1) // tile * tile
  pad_start = jnp.cumsum(padded) - padded
  start = jnp.cumsum(sizes) - sizes
  e = jnp.minimum(groups.expert_of_row, sizes.shape[0] - 1)
  rows = jnp.arange(m, dtype=jnp.int32)
  n_tiles = -(-m // tile) + sizes.shape[0]
  destination = jnp.where(rows < jnp.sum(sizes), pad_start[e] + rows - start[e], n_tiles * tile + rows)
  tile_expert = jnp.searchsorted(jnp.cumsum(padded), jnp.arange(n_tiles) * tile, side="right")
  tile_expert = jnp.minimum(tile_expert, sizes.shape[0] - 1).astype(jnp.int32)
  return Tiles(destination.astype(jnp.int32), tile_expert, tile)


def to_tiles(x: jax.Array, tiles: Tiles) -> jax.Array:
  """Sorted rows x [M, D] -> padded rows [n_tiles * tile, D] (padding rows are zero)."""
  out = jnp.zeros((tiles.tile_expert.shape[0] * tiles.tile, x.shape[-1]), x.dtype)
  return out.at[tiles.destination].set(x, mode="drop", unique_indices=True)


def from_tiles(y: jax.Array, tiles: Tiles) -> jax.Array:
  """Padded rows [n_tiles * tile, D] -> sorted rows [M, D] (rows without a tile are zero)."""
  return y.at[tiles.destination].get(mode="fill", fill_value=0, unique_indices=True)


def tiled_matmul(x: jax.Array, w: jax.Array, tiles: Tiles) -> jax.Array:
  """Block-diagonal grouped matmul: tile t of x times w[tile_expert[t]].  x [n_tiles*tile, I], w [E, I, O]

  One [tile, I] x [I, O] product per tile in a loop, the expert's weights sliced in place (and again in
  the backward), so no per-tile copy of the weights is ever stored: memory stays that of the rows.
  """
  n_tiles = tiles.tile_expert.shape[0]
  xt = x.reshape(n_tiles, tiles.tile, x.shape[-1])
  one = jax.checkpoint(lambda rows, e: rows @ jax.lax.dynamic_index_in_dim(w, e, keepdims=False))
  return jax.lax.map(lambda args: one(*args), (xt, tiles.tile_expert)).reshape(n_tiles * tiles.tile, w.shape[-1])
