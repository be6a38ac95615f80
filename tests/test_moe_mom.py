"""Mixture-of-Memories mixer: unchosen memories untouched, load-balancing loss sown (the mixer contract:
tests/test_mixers.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from layers import registry
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext

CTX = LayerContext(d_model=16, n_heads=2)
X = jax.random.normal(jax.random.key(0), (2, 7, 16))


@functools.cache
def _forward():
  """(layer, (y, aux, metrics)) of one jitted forward, shared by the tests."""
  layer = registry.build("mixer", "mom", CTX, rngs=nnx.Rngs(0), n_memories=3, top_k=1, chunk_size=4)
  return layer, nnx.jit(nnx.capture(lambda m, x: m(x), AuxLoss, LayerMetric))(layer, X)


def test_unchosen_memory_keeps_its_state():
  layer, _ = _forward()
  router = layer.router[...]
  layer.router[...] = jnp.zeros((16, 3)).at[:, 0].set(100.0)
  x = jnp.abs(X[:1]) + 0.5  # every token routes to memory 0
  _, state = nnx.jit(lambda m, x, s: m.decode(x, s, jnp.int32(0)))(layer, x[:, :1], layer.init_cache(1, 1))
  layer.router[...] = router
  per_memory = np.abs(np.asarray(state["state"])).reshape(3, -1).sum(-1)
  assert per_memory[0] > 0 and per_memory[1] == 0 and per_memory[2] == 0


def test_load_balance_loss_and_load():
  layer, (_, aux, metrics) = _forward()
  load = np.asarray(metrics["mom_memory_load"][0])
  logits = np.asarray(X.reshape(-1, 16)) @ np.asarray(layer.router[...])
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(load, np.bincount(p.argmax(-1), minlength=3) / 14, rtol=1e-6)
  np.testing.assert_allclose(aux["mom_load_balance"][0], 0.01 * 3 * np.sum(load * p.mean(0)), rtol=1e-5)
