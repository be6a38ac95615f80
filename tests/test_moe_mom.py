"""Mixture-of-Memories mixer: the routed form equals the dense specification (outputs and gradients, packed
documents too) without computing every memory for every token; unchosen memories untouched; load-balancing
loss sown. The mixer contract (decode == forward, packed documents): tests/test_mixers.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from layers import registry
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext

CTX = LayerContext(d_model=16, n_heads=2, layer_idx=1)
X = jax.random.normal(jax.random.key(0), (2, 7, 16))
SEGMENTS = jnp.array([[0, 0, 0, 1, 1, 1, 1], [4, 4, 4, 4, 4, 2, 2]])


def _layer(**options):
  return registry.build("mixer", "mom", CTX, rngs=nnx.Rngs(0), **{"n_memories": 3, "chunk_size": 4, **options})


@functools.cache
def _forward():
  """(layer, (y, aux, metrics)) of one jitted forward, shared by the tests."""
  layer = _layer(top_k=1)
  return layer, nnx.jit(nnx.capture(lambda m, x: m(x), AuxLoss, LayerMetric))(layer, X)


def test_routed_form_equals_dense_outputs_and_gradients():
  routed = _layer(top_k=2)
  dense = _layer(top_k=2, routed=False)

  def loss(layer, x):
    return jnp.sum(jnp.sin(layer(x, segment_ids=SEGMENTS)))

  (y_r, (g_r, gx_r)), (y_d, (g_d, gx_d)) = (
    jax.jit(jax.value_and_grad(lambda p, x, g=graph: loss(nnx.merge(g, p), x), argnums=(0, 1)))(state, X)
    for graph, state in (nnx.split(routed), nnx.split(dense)))
  np.testing.assert_allclose(y_r, y_d, rtol=1e-5)
  pairs = [("x", gx_r, gx_d)] + [(p, a[...], b[...]) for (p, a), (_, b) in
                                 zip(nnx.to_flat_state(g_r), nnx.to_flat_state(g_d))]
  for path, a, b in pairs:  # to 1e-5 of the tensor's largest entry: sums in another order
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=str(path))


def test_routed_form_never_computes_every_memory():
  """No [B, T, M*H*K] projection or [B, T, M*H, .] recurrence in the routed forward; both in the dense one."""
  dense_shapes = {(2, 7, 3 * 16), (2, 7, 3 * 2, 8)}

  def shapes(layer):
    graphdef, state = nnx.split(layer)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, X).jaxpr
    return {tuple(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars}

  assert not dense_shapes & shapes(_layer(top_k=1))
  assert dense_shapes <= shapes(_layer(top_k=1, routed=False))


def test_unchosen_memory_keeps_its_state():
  layer, _ = _forward()
  kernel = layer.router.kernel[...]
  layer.router.kernel[...] = jnp.zeros((16, 3)).at[:, 0].set(100.0)
  x = jnp.abs(X[:1]) + 0.5  # every token routes to memory 0
  _, state = nnx.jit(lambda m, x, s: m.decode(x, s, jnp.int32(0)))(layer, x[:, :1], layer.init_cache(1, 1))
  layer.router.kernel[...] = kernel
  per_memory = np.abs(np.asarray(state["state"])).reshape(3, -1).sum(-1)
  assert per_memory[0] > 0 and per_memory[1] == 0 and per_memory[2] == 0


def test_load_balance_loss_and_load():
  layer, (_, aux, metrics) = _forward()
  load = np.asarray(metrics["mom_memory_load/1"][0])
  logits = np.asarray(X.reshape(-1, 16)) @ np.asarray(layer.router.kernel[...])
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(load, np.bincount(p.argmax(-1), minlength=3) / 14, rtol=1e-6)
  np.testing.assert_allclose(aux["mom_load_balance"][0], 0.01 * 3 * np.sum(load * p.mean(0)), rtol=1e-5)
