"""Expert parallelism on 8 fake CPU devices: output, aux losses and gradients equal one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType

from layers import registry
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext
from layers.moe.expert_parallel import active_mesh

CTX = LayerContext(d_model=8, d_ff=16)


def _compiled_loss_and_grads(layer, x):
  """Compiled (loss, (param grads, x grad)) of sum(sin(y)) + aux losses, and its HLO text."""
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

  def loss(params, x):
    y, aux, _ = nnx.capture(nnx.merge(graphdef, params, rest), AuxLoss, LayerMetric)(x)
    return jnp.sum(jnp.sin(y)) + sum(jax.tree.leaves(aux))

  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x).compile()
  return compiled(params, x), compiled.as_text()


@pytest.mark.parametrize("dispatch, shape", [("capacity", (2, 4)), ("dropless", (1, 8))])
def test_expert_parallel_equals_single_device(dispatch, shape):
  layer = registry.build("ffn", "moe", CTX, rngs=nnx.Rngs(0), n_experts=8, top_k=2, n_shared=1,
                         dispatch=dispatch, capacity_factor=4.0, load_balance_weight=0.1, z_loss_weight=0.1)
  x = jax.random.normal(jax.random.key(0), (8, 4, 8))
  assert active_mesh() is None
  (loss_1, (g_params_1, g_x_1)), hlo_1 = _compiled_loss_and_grads(layer, x)
  mesh = jax.make_mesh(shape, ("data", "expert"), axis_types=(AxisType.Auto,) * 2)
  with jax.set_mesh(mesh):
    assert active_mesh() is not None
    (loss_ep, (g_params_ep, g_x_ep)), hlo_ep = _compiled_loss_and_grads(layer, x)
  assert "all-to-all" in hlo_ep and "all-to-all" not in hlo_1
  np.testing.assert_allclose(loss_ep, loss_1, rtol=1e-5)
  np.testing.assert_allclose(g_x_ep, g_x_1, rtol=1e-4, atol=1e-6)
  for (path, g1), (_, gep) in zip(nnx.to_flat_state(g_params_1), nnx.to_flat_state(g_params_ep)):
    assert float(jnp.max(jnp.abs(g1[...]))) > 0, path
    np.testing.assert_allclose(gep[...], g1[...], rtol=1e-4, atol=1e-6, err_msg=str(path))
