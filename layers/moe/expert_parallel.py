"""Expert parallelism: experts sharded over the mesh "expert" axis, tokens exchanged all-to-all.

Inside `jax.shard_map` every device holds a slice of the tokens (split over all mesh axes but
"tensor") and E / ep experts. Each device fills capacity buffers [E, C, D] for its own tokens,
an all-to-all over "expert" sends buffer rows of expert e to the device holding e
([E_local, ep * C, D]), the local experts run, and a second all-to-all brings the results back
(GShard). Routing decisions are made outside, so balancing statistics are global.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from layers.moe import dispatch
from layers.moe.experts import grouped_apply

EXPERT_AXIS = "expert"


def active_mesh(expert_axis: str = EXPERT_AXIS):
  """The mesh set with `jax.set_mesh` if it has an expert axis of size > 1, else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.shape.get(expert_axis, 1) <= 1:
    return None
  return mesh


def token_axes(mesh) -> tuple[str, ...]:
  """Mesh axes the tokens are split over inside the shard_map: all but "tensor"."""
  return tuple(a for a in mesh.axis_names if a != "tensor")


def expert_parallel_apply(graphdef, params: Any, rest: Any, x: jax.Array, experts: jax.Array,
                          weights: jax.Array, *, n_experts: int, capacity_factor: float | None, mesh,
                          expert_axis: str = EXPERT_AXIS) -> tuple[jax.Array, jax.Array]:
  """Routed experts under expert parallelism.

  x [N, D], experts / weights [N, k] (token-choice assignments), params stacked [E, ...].
  capacity_factor None = dropless (C = local token count, so no expert can overflow).
  Returns (y [N, D], kept [N, k]).
  """
  axes = token_axes(mesh)
  n_shards = math.prod(mesh.shape[a] for a in axes)
  ep = mesh.shape[expert_axis]
  n, k = experts.shape
  if n % n_shards:
    raise ValueError(f"{n} tokens do not split over mesh axes {axes} ({n_shards} shards)")
  if n_experts % ep:
    raise ValueError(f"n_experts={n_experts} is not divisible by the {expert_axis!r} mesh axis ({ep})")
  n_local = n // n_shards
  cap = n_local if capacity_factor is None else dispatch.capacity(n_local, n_experts, k, capacity_factor)

  def body(params, rest, x, experts, weights):  # local: x [n_local, D], params [E/ep, ...]
    slots = dispatch.capacity_slots(experts, n_experts, cap)
    buffers = dispatch.to_buffers(x, experts, slots, n_experts, cap)  # [E, C, D]
    buffers = jax.lax.all_to_all(buffers, expert_axis, 0, 1, tiled=True)  # [E/ep, ep*C, D]
    y = grouped_apply(graphdef, params, rest, buffers)
    y = jax.lax.all_to_all(y, expert_axis, 1, 0, tiled=True)  # [E, C, D]
    return dispatch.from_buffers(y, experts, slots, weights), slots.kept

  tokens = P(axes)
  param_specs = jax.tree.map(lambda _: P(expert_axis), params)
  fn = jax.shard_map(body, mesh=mesh, in_specs=(param_specs, P(), tokens, tokens, tokens),
                     out_specs=(tokens, tokens))
  return fn(params, rest, x, experts, weights.astype(jnp.float32))
