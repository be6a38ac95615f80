"""Expert parallelism on 8 fake CPU devices: outputs, aux losses and gradients equal one device, for uneven
loads with experts that get no tokens; the dropless exchange's buffers are bounded by the routed rows."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from layers import registry
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext
from layers.moe.expert_parallel import active_mesh, ragged_all_to_all_dense

D, F = 12, 20  # model and expert widths, distinct from every token count below
STARVED, HOT = (0, 1, 2), 3


def _mesh(shape):
  return jax.make_mesh(shape, ("data", "expert"), axis_types=(AxisType.Auto,) * 2)


def _skewed_layer(n_experts: int, **options):
  """An MoE whose router never picks experts 0-2 and always picks expert 3 (x[..., 0] is a constant 3)."""
  layer = registry.build("ffn", "moe", LayerContext(d_model=D, d_ff=2 * F), rngs=nnx.Rngs(0), n_experts=n_experts,
                         top_k=2, expert_hidden=F, n_shared=1, grouped_matmul="tiled", tile_size=4,
                         load_balance_weight=0.1, z_loss_weight=0.1, **options)
  kernel = layer.router.kernel[...].at[0, list(STARVED)].set(-5.0).at[0, HOT].set(2.0)
  layer.router.kernel[...] = kernel
  return layer


def _x(n_tokens: int):
  return jax.random.normal(jax.random.key(0), (n_tokens // 8, 8, D)).at[..., 0].set(3.0)


def _loss_fn(layer):
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

  def loss(params, x):
    y, aux, _ = nnx.capture(nnx.merge(graphdef, params, rest), AuxLoss, LayerMetric)(x)
    return jnp.sum(jnp.sin(y)) + sum(jax.tree.leaves(aux))

  return params, jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _close(actual, desired, what):
  """Equal to 1e-5 of the tensor's largest entry (fp32 sums over 64 tokens in another order)."""
  np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-5 * np.abs(desired).max(), err_msg=str(what))


@functools.cache
def _single_device(routing: str, dispatch: str):
  factor = 1.0 if routing == "expert_choice" else 4.0  # expert choice: 16 of 64 tokens per expert; else no drops
  layer = _skewed_layer(8, routing=routing, dispatch=dispatch, capacity_factor=factor)
  params, fn = _loss_fn(layer)
  x = _x(64)
  assert active_mesh() is None
  return layer, x, jax.device_get(fn(params, x))


@pytest.mark.parametrize("routing, dispatch, shape", [
  ("token_choice", "dropless", (1, 8)), ("token_choice", "dropless", (2, 4)),
  ("expert_choice", "dropless", (2, 4)), ("token_choice", "capacity", (2, 4)),
])
def test_expert_parallel_equals_single_device(routing, dispatch, shape):
  layer, x, (loss_1, (g_params_1, g_x_1)) = _single_device(routing, dispatch)
  with jax.set_mesh(_mesh(shape)):
    assert active_mesh() is not None
    params, fn = _loss_fn(layer)
    assert "all-to-all" in fn.lower(params, x).compile().as_text()
    loss_ep, (g_params_ep, g_x_ep) = fn(params, x)
  np.testing.assert_allclose(loss_ep, loss_1, rtol=1e-5)
  _close(g_x_ep, g_x_1, "x")
  for (path, g1), (_, gep) in zip(nnx.to_flat_state(g_params_1), nnx.to_flat_state(g_params_ep)):
    _close(gep[...], g1[...], path)
  up = nnx.state(g_params_1, nnx.Param)["experts"]["ffn"]["up"]["kernel"][...]
  if routing == "token_choice":  # uneven load: the starved experts learn nothing, the others do
    assert np.all(up[list(STARVED)] == 0) and np.all(np.abs(up[HOT]) > 0)


def test_dense_exchange_matches_ragged_all_to_all_semantics():
  """Random sizes on 4 devices against jax.lax.ragged_all_to_all's documented semantics, in numpy."""
  ep, rows, chunk = 4, 10, 6
  rng = np.random.default_rng(0)
  sent = rng.integers(0, 3, (ep, ep))  # [src, dst]
  operand = rng.normal(size=(ep, rows, 3)).astype(np.float32)
  input_offsets = np.cumsum(sent, 1) - sent + rng.integers(0, 2, (ep, 1))  # a gap before the first slice
  output_offsets = np.cumsum(sent, 0) - sent + 1  # receivers keep row 0 free
  want = np.full((ep, rows, 3), -1.0, np.float32)
  for s in range(ep):
    for d in range(ep):
      src = operand[s, input_offsets[s, d]:input_offsets[s, d] + sent[s, d]]
      want[d, output_offsets[s, d]:output_offsets[s, d] + sent[s, d]] = src
  mesh = jax.make_mesh((ep,), ("x",), axis_types=(AxisType.Auto,), devices=jax.devices()[:ep])

  def run(operand, input_offsets, send_sizes, output_offsets, recv_sizes):
    out = jnp.full((rows, 3), -1.0)
    return ragged_all_to_all_dense(operand[0], out, input_offsets[0], send_sizes[0], output_offsets[0],
                                   recv_sizes[0], axis_name="x", max_chunk=chunk)[None]

  fn = jax.jit(jax.shard_map(run, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
  got = fn(*map(jnp.asarray, (operand, input_offsets, sent, output_offsets, sent.T)))
  np.testing.assert_array_equal(got, want)


def _token_buffer_rows(hlo: str) -> int:
  """Largest number of rows of a token-like array ([..., D] or [..., F], not a weight [.., D, F]) in the HLO."""
  largest = 0
  for dims in re.findall(r"f32\[([\d,]+)\]", hlo):
    shape = [int(d) for d in dims.split(",")]
    if len(shape) >= 2 and shape[-1] in (D, F) and shape[-2] not in (D, F):
      largest = max(largest, math.prod(shape[:-1]))
  return largest


@pytest.mark.parametrize("routing", ["token_choice", "expert_choice"])
def test_dropless_exchange_buffers_bounded_by_routed_rows(routing):
  """32 experts on 8 devices, top-2 of 64 tokens (8 per device): the routed rows of the 8 devices are 128.

  No buffer of the forward and backward holds more than those 128 rows plus the grouped matmul's tile
  padding (4 local experts x 4-row tiles); capacity buffers sized for no drops (C = the 8 local tokens)
  would hold E x 8 = 256 (benchmarks/moe.py compares the compiled memory of both)."""
  n_experts, ep, n_local, k, tile = 32, 8, 8, 2, 4
  with jax.set_mesh(_mesh((1, ep))):
    params, fn = _loss_fn(_skewed_layer(n_experts, routing=routing, capacity_factor=1.0))
    rows = _token_buffer_rows(fn.lower(params, _x(ep * n_local)).compile().as_text())
  assert n_local * k <= rows <= ep * n_local * k + n_experts // ep * tile < n_experts * n_local, rows
