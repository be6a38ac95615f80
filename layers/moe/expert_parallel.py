"""Expert parallelism: experts sharded over the mesh "expert" axis, tokens exchanged between devices.

Inside `jax.shard_map` every device holds a slice of the tokens (split over all mesh axes but "tensor")
and E / ep of the experts. Routing decisions are made outside, so balancing statistics are global.

Dropless (`ragged_apply`, MLP / GLU experts): a device sorts its routed rows by expert and sends each
device exactly the rows for that device's experts (`jax.lax.ragged_all_to_all`; sizes and offsets come
from an all-gather of the per-expert counts). The receiver groups the rows by local expert, runs one
grouped matmul per projection, and the results travel back the same way. Shapes are static, so the
receive buffer holds the worst case: each of the ep senders sends at most min(k, E/ep) rows per token
(a token's k experts are distinct), n * min(ep * k, E) rows for n local tokens: never more than the
routed rows of the ep devices, never the E * n rows of capacity buffers sized for no drops.
Expert choice uses the same exchange: a device's rows are the (expert, slot) pairs whose token it holds.
XLA:CPU has no ragged all-to-all; there the exchange is `ragged_all_to_all_dense`: the same semantics
from one all_to_all of per-destination slabs of the static per-pair bound.

Capacity (`capacity_apply`, GShard): each device fills capacity buffers [E, C, D] for its tokens, an
all-to-all sends buffer rows of expert e to the device holding e ([E/ep, ep*C, D]), the local experts
run, and a second all-to-all brings the results back; assignments past an expert's capacity are dropped.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from layers.moe import dispatch
from layers.moe.experts import grouped_apply, sorted_apply

EXPERT_AXIS = "expert"
EXCHANGES = ("auto", "ragged_all_to_all", "all_to_all")


def active_mesh(expert_axis: str = EXPERT_AXIS):
  """The mesh set with `jax.set_mesh` if it has an expert axis of size > 1, else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.shape.get(expert_axis, 1) <= 1:
    return None
  return mesh


def token_axes(mesh) -> tuple[str, ...]:
  """Mesh axes the tokens are split over inside the shard_map: all but "tensor"."""
  return tuple(a for a in mesh.axis_names if a != "tensor")


def _exclusive_cumsum(x: jax.Array, axis: int = 0) -> jax.Array:
  return jnp.cumsum(x, axis=axis) - x


def ragged_all_to_all_dense(operand: jax.Array, output: jax.Array, input_offsets: jax.Array,
                            send_sizes: jax.Array, output_offsets: jax.Array, recv_sizes: jax.Array, *,
                            axis_name: str, max_chunk: int) -> jax.Array:
  """`jax.lax.ragged_all_to_all` (one slice per device, same arguments and result) from one dense all_to_all.

  operand [M, ...], output [R, ...]; input_offsets, send_sizes, output_offsets, recv_sizes [ep] int32.
  Slice d of the operand (send_sizes[d] <= max_chunk rows) travels as a [max_chunk, ...] slab, so the
  exchange moves ep * max_chunk rows per device; for backends without a ragged all-to-all (XLA:CPU).
  The example of `jax.lax.ragged_all_to_all`'s docstring, on two devices:

    >>> mesh = jax.make_mesh((2,), ("x",), (jax.sharding.AxisType.Auto,), devices=jax.devices()[:2])
    >>> def f(a, io, ss, oo, rs):
    ...   return ragged_all_to_all_dense(a, jnp.zeros(4, a.dtype), io, ss, oo, rs, axis_name="x", max_chunk=2)
    >>> run = jax.shard_map(f, mesh=mesh, in_specs=P("x"), out_specs=P("x"))
    >>> run(*map(jnp.array, ([1, 2, 2, 3, 4, 0], [0, 1, 0, 1], [1, 2, 1, 1], [0, 0, 1, 2], [1, 1, 2, 1]))).tolist()
    [1, 3, 0, 0, 2, 2, 4, 0]
  """
  i = jnp.arange(max_chunk)
  source = jnp.where(i < send_sizes[:, None], input_offsets[:, None] + i, operand.shape[0])  # [ep, S]
  slabs = operand.at[source].get(mode="fill", fill_value=0)  # [ep, S, ...], slab d for device d
  slabs = jax.lax.all_to_all(slabs, axis_name, 0, 0, tiled=True)  # slab s from device s
  offsets = jax.lax.all_to_all(output_offsets, axis_name, 0, 0, tiled=True)  # where sender s writes here
  target = jnp.where(i < recv_sizes[:, None], offsets[:, None] + i, output.shape[0])
  return output.at[target].set(slabs, mode="drop")


class Route(NamedTuple):
  """The four [ep] int32 arrays of one ragged all-to-all, as this device passes them."""

  input_offsets: jax.Array
  send_sizes: jax.Array
  output_offsets: jax.Array
  recv_sizes: jax.Array


def _routes(sent: jax.Array, me: jax.Array) -> tuple[Route, Route]:
  """Dispatch and return routes from sent [src, dst] (rows each device sends each device).

  Senders' slices land on a receiver in sender order; the return trip sends each slice back to where
  it came from.
  """
  send, recv = sent[me], sent[:, me]
  out = Route(_exclusive_cumsum(send), send, _exclusive_cumsum(sent, 0)[me], recv)
  back = Route(_exclusive_cumsum(recv), recv, _exclusive_cumsum(sent, 1)[:, me], send)
  return out, back


def _exchange(impl: str, operand: jax.Array, rows: int, route: Route, axis: str, max_chunk: int) -> jax.Array:
  output = jnp.zeros((rows, *operand.shape[1:]), operand.dtype)
  if impl == "ragged_all_to_all":
    return jax.lax.ragged_all_to_all(operand, output, *route, axis_name=axis)
  return ragged_all_to_all_dense(operand, output, *route, axis_name=axis, max_chunk=max_chunk)


def _exchanged_experts(ffn: nnx.Module, rows: jax.Array, group_sizes: jax.Array, *, axis: str, ep: int,
                       max_chunk: int, impl: str, tile: int, exchange: str, dtype) -> jax.Array:
  """Local rows [M, D] sorted by global expert with counts group_sizes [E] (rows past their sum are
  padding) -> the experts' outputs for them [M, D]. ffn holds this device's E / ep experts."""
  n_experts = group_sizes.shape[0]
  local = n_experts // ep
  me = jax.lax.axis_index(axis)
  counts = jax.lax.all_gather(group_sizes, axis).reshape(ep, ep, local)  # [src, dst, local expert]
  out, back = _routes(jnp.sum(counts, axis=-1), me)
  received = _exchange(exchange, rows, ep * max_chunk, out, axis, max_chunk)  # by sender, then expert
  mine = counts[:, me].reshape(-1)  # [src * local]: sizes of the received blocks, in order
  row = jnp.arange(received.shape[0])
  block = jnp.searchsorted(jnp.cumsum(mine), row, side="right")
  expert = jnp.where(row < jnp.sum(mine), block % local, local)  # padding rows last
  order = jnp.argsort(expert, stable=True).astype(jnp.int32)
  groups = dispatch.Groups(order, jnp.sum(mine.reshape(ep, local), axis=0), expert[order])
  y = sorted_apply(ffn, received[order], groups, impl=impl, tile=tile, dtype=dtype)
  y = jnp.zeros_like(y).at[order].set(y, unique_indices=True)
  return _exchange(exchange, y, rows.shape[0], back, axis, max_chunk)


def _check(mesh, n_tokens: int, n_experts: int, expert_axis: str) -> tuple[tuple[str, ...], int, int]:
  axes = token_axes(mesh)
  n_shards = math.prod(mesh.shape[a] for a in axes)
  ep = mesh.shape[expert_axis]
  if n_tokens % n_shards:
    raise ValueError(f"{n_tokens} tokens do not split over mesh axes {axes} ({n_shards} shards)")
  if n_experts % ep:
    raise ValueError(f"n_experts={n_experts} is not divisible by the {expert_axis!r} mesh axis ({ep})")
  return axes, n_tokens // n_shards, ep


def _resolve(exchange: str) -> str:
  if exchange not in EXCHANGES:
    raise ValueError(f"unknown exchange {exchange!r}; choose from {EXCHANGES}")
  if exchange == "auto":
    return "all_to_all" if jax.default_backend() == "cpu" else "ragged_all_to_all"
  return exchange


def ragged_apply(graphdef, params: Any, rest: Any, x: jax.Array, experts: jax.Array, weights: jax.Array, *,
                 mesh, grouped_matmul: str, tile: int, dtype, exchange: str = "auto",
                 expert_axis: str = EXPERT_AXIS) -> jax.Array:
  """Dropless token choice under expert parallelism (MLP / GLU experts).

  x [N, D], experts / weights [N, k] (token-choice assignments), params stacked [E, ...] -> y [N, D].
  """
  n_experts = jax.tree.leaves(params)[0].shape[0]
  axes, n, ep = _check(mesh, x.shape[0], n_experts, expert_axis)
  k = experts.shape[1]
  exchange = _resolve(exchange)

  def body(params, rest, x, experts, weights):  # local: x [n, D], params [E/ep, ...]
    groups = dispatch.sort_by_expert(experts, n_experts)
    rows = _exchanged_experts(nnx.merge(graphdef, params, rest), dispatch.to_groups(x, groups, k),
                              groups.group_sizes, axis=expert_axis, ep=ep, max_chunk=n * min(k, n_experts // ep),
                              impl=grouped_matmul, tile=tile, exchange=exchange, dtype=dtype)
    return dispatch.from_groups(rows, groups, weights)

  tokens = P(axes)
  param_specs = jax.tree.map(lambda _: P(expert_axis), params)
  fn = jax.shard_map(body, mesh=mesh, in_specs=(param_specs, P(), tokens, tokens, tokens), out_specs=tokens)
  return fn(params, rest, x, experts, weights.astype(jnp.float32))


def ragged_expert_choice_apply(graphdef, params: Any, rest: Any, x: jax.Array, tokens: jax.Array,
                               weights: jax.Array, *, mesh, grouped_matmul: str, tile: int, dtype,
                               exchange: str = "auto", expert_axis: str = EXPERT_AXIS) -> jax.Array:
  """Expert choice under expert parallelism (MLP / GLU experts).

  x [N, D]; tokens / weights [E, C]: expert e's C chosen tokens (global ids) and their weights -> y [N, D].
  A device's rows are the (e, c) pairs whose token it holds, in (e, c) order: at most E * min(C, n).
  """
  n_experts, cap = tokens.shape
  axes, n, ep = _check(mesh, x.shape[0], n_experts, expert_axis)
  exchange = _resolve(exchange)
  m = n_experts * min(cap, n)

  def body(params, rest, x, tokens, weights):  # local: x [n, D], tokens / weights [E, C] global
    local = tokens - jax.lax.axis_index(axes) * n
    held = (local >= 0) & (local < n)  # [E, C]
    slot = jnp.where(held, jnp.cumsum(held.reshape(-1)).reshape(held.shape) - 1, m)  # row of (e, c), or none
    token = jnp.zeros((m,), jnp.int32).at[slot].set(local, mode="drop")
    weight = jnp.zeros((m,), jnp.float32).at[slot].set(weights, mode="drop")  # 0 on padding rows
    rows = jnp.zeros((m, x.shape[-1]), x.dtype).at[slot].set(x[jnp.clip(local, 0, n - 1)], mode="drop")
    rows = _exchanged_experts(nnx.merge(graphdef, params, rest), rows, jnp.sum(held, axis=1).astype(jnp.int32),
                              axis=expert_axis, ep=ep, max_chunk=n_experts // ep * min(cap, n),
                              impl=grouped_matmul, tile=tile, exchange=exchange, dtype=dtype)
    return jnp.zeros_like(x).at[token].add(rows * weight[:, None].astype(rows.dtype))

  param_specs = jax.tree.map(lambda _: P(expert_axis), params)
  fn = jax.shard_map(body, mesh=mesh, in_specs=(param_specs, P(), P(axes), P(), P()), out_specs=P(axes))
  return fn(params, rest, x, tokens, weights.astype(jnp.float32))


def capacity_apply(graphdef, params: Any, rest: Any, x: jax.Array, experts: jax.Array, weights: jax.Array, *,
                   n_experts: int, capacity_factor: float | None, mesh,
                   expert_axis: str = EXPERT_AXIS) -> tuple[jax.Array, jax.Array]:
  """Token choice with capacity buffers under expert parallelism (GShard); any ffn as expert.

  x [N, D], experts / weights [N, k], params stacked [E, ...]. capacity_factor None: C = local token
  count (no expert can overflow; E * n rows per device). Returns (y [N, D], kept [N, k]).
  """
  axes, n, _ = _check(mesh, x.shape[0], n_experts, expert_axis)
  k = experts.shape[1]
  cap = n if capacity_factor is None else dispatch.capacity(n, n_experts, k, capacity_factor)

  def body(params, rest, x, experts, weights):  # local: x [n, D], params [E/ep, ...]
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
