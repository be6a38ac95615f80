"""Finedeep: the layer against a direct formula, parameter and FLOP parity with the dense ffn it splits,
gradients to every expert and router vector, option errors."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from layers import registry
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext
from layers.forward_flops import active_params, forward_flops_per_token
from layers.moe import finedeep

CTX = LayerContext(d_model=8, d_ff=48)


def _build(ctx=CTX, **options):
  return registry.build("ffn", "finedeep", ctx, rngs=nnx.Rngs(0), **{"n_sublayers": 3, "n_experts": 4, **options})


def _n_params(module) -> int:
  return sum(v.size for _, v in nnx.to_flat_state(nnx.state(module, nnx.Param)))


def test_docstring_examples_run():
  result = doctest.testmod(finedeep)
  assert result.attempted > 0 and result.failed == 0


def _direct(layer, x):
  """Sub-layer by sub-layer in numpy: SwiGLU experts, sigmoid(<o, r>) normalised, residual, RMSNorm."""
  f = layer.experts.ffn
  gate, up, down = (np.asarray(f.gate.kernel[...]), np.asarray(f.up.kernel[...]), np.asarray(f.down.kernel[...]))
  router = np.asarray(layer.router[...])
  m_count, k_count = router.shape[:2]
  u = np.asarray(x, np.float64)
  for m in range(m_count):
    v = u
    if m:
      scale = np.asarray(layer.norms[m - 1].scale[...])
      v = u / np.sqrt(np.mean(u**2, -1, keepdims=True) + 1e-6) * scale
    outs = []
    for k in range(k_count):
      e = m * k_count + k
      g = v @ gate[e]
      outs.append((g / (1 + np.exp(-g)) * (v @ up[e])) @ down[e])
    scores = np.stack([1 / (1 + np.exp(-(o @ router[m, k]))) for k, o in enumerate(outs)])  # [K, N]
    w = scores / scores.sum(0)
    u = u + sum(w[k][:, None] * outs[k] for k in range(k_count))
  return u - np.asarray(x, np.float64)


def test_matches_the_direct_formula():
  layer = _build()
  for norm in layer.norms:  # norms that are not the identity
    norm.scale[...] = jax.random.uniform(jax.random.key(7), norm.scale.shape, minval=0.5, maxval=1.5)
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  y, _, metrics = nnx.capture(layer, AuxLoss, LayerMetric)(x)
  assert layer.experts.ffn.up.kernel.shape == (12, 8, 4)  # 3 x 4 experts of width 48 / 12
  np.testing.assert_allclose(y.reshape(-1, 8), _direct(layer, x.reshape(-1, 8)), rtol=2e-5, atol=2e-5)
  weights = metrics["finedeep_weights/0"][0]
  assert weights.shape == (3, 4)
  np.testing.assert_allclose(jnp.sum(weights, -1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("d_model, d_ff, m, k", [(8, 48, 3, 4), (1024, 2816, 4, 8), (2048, 5632, 2, 16)])
def test_parameter_and_flop_parity_with_the_dense_ffn(d_model, d_ff, m, k):
  ctx = LayerContext(d_model=d_model, d_ff=d_ff)
  layer = nnx.eval_shape(lambda: _build(ctx, n_sublayers=m, n_experts=k))
  dense = nnx.eval_shape(lambda: registry.build("ffn", "swiglu", ctx, rngs=nnx.Rngs(0)))
  router, norms = m * k * d_model, (m - 1) * d_model
  assert _n_params(layer) == _n_params(dense) + router + norms
  assert active_params(layer) == _n_params(layer)  # dense: every expert is active
  assert forward_flops_per_token(layer, 128) == forward_flops_per_token(dense, 128) + 2 * router
  if d_model >= 1024:  # at paper shapes the router and norms cost under 1% (M * K / (3 d_ff) of the ffn)
    assert _n_params(layer) / _n_params(dense) - 1 < 1e-2
    assert forward_flops_per_token(layer, 128) / forward_flops_per_token(dense, 128) - 1 < 1e-2


def test_gradients_reach_every_expert_and_router_vector():
  layer = _build()
  grads = nnx.grad(lambda m, x: jnp.sum(jnp.sin(m(x))))(layer, jax.random.normal(jax.random.key(1), (3, 8)))
  router = np.asarray(grads.router[...])
  assert np.all(np.abs(router).max(-1) > 0)  # every (m, k) router vector
  up = np.asarray(grads.experts.ffn.up.kernel[...])
  assert np.all(np.abs(up).reshape(12, -1).max(-1) > 0)  # every expert
  assert all(float(jnp.abs(n["scale"][...]).max()) > 0 for n in grads.norms.values())


def test_bf16_compute_keeps_dtype():
  layer = _build(LayerContext(d_model=8, d_ff=48, dtype=jnp.bfloat16))
  assert layer(jnp.ones((2, 8), jnp.bfloat16)).dtype == jnp.bfloat16


def test_bad_split_fails_with_the_fix():
  with pytest.raises(ValueError, match="M \\* K dividing 48"):
    _build(n_sublayers=5, n_experts=2)
  with pytest.raises(ValueError, match="must be >= 1"):
    _build(n_sublayers=0)
