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


def _loss_and_grads(layer, x):
  def loss(m, x):
    y, aux, _ = nnx.capture(m, AuxLoss, LayerMetric)(x)
    return jnp.sum(jnp.sin(y)) + sum(jax.tree.leaves(aux))

  return nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1)))(layer, x)


@pytest.mark.parametrize("dispatch, shape", [("capacity", (2, 4)), ("dropless", (1, 8))])
def test_expert_parallel_equals_single_device(dispatch, shape):
  layer = registry.build("ffn", "moe", CTX, rngs=nnx.Rngs(0), n_experts=8, top_k=2, n_shared=1,
                         dispatch=dispatch, capacity_factor=4.0, load_balance_weight=0.1, z_loss_weight=0.1)
  x = jax.random.normal(jax.random.key(0), (8, 4, 8))
  assert active_mesh() is None
  loss_1, (g_layer_1, g_x_1) = _loss_and_grads(layer, x)
  mesh = jax.make_mesh(shape, ("data", "expert"), axis_types=(AxisType.Auto,) * 2)
  with jax.set_mesh(mesh):
    assert active_mesh() is not None
    hlo = nnx.jit(lambda m, x: m(x)).lower(layer, x).as_text()
    assert "all_to_all" in hlo or "all-to-all" in hlo
    loss_ep, (g_layer_ep, g_x_ep) = _loss_and_grads(layer, x)
  np.testing.assert_allclose(loss_ep, loss_1, rtol=1e-5)
  np.testing.assert_allclose(g_x_ep, g_x_1, rtol=1e-4, atol=1e-6)
  flat_1 = nnx.to_flat_state(nnx.state(g_layer_1, nnx.Param))
  flat_ep = dict(nnx.to_flat_state(nnx.state(g_layer_ep, nnx.Param)))
  for path, g in flat_1:
    np.testing.assert_allclose(flat_ep[path][...], g[...], rtol=1e-4, atol=1e-6, err_msg=str(path))
