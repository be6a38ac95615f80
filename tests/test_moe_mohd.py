"""Mixture of Hidden Dimensions: the layer against a direct formula (router, sparse read and write of hidden
sub-dimensions, activation scaling, Monarch group fusion), the grouped fast form against the masked
specification (outputs and gradients), active parameter / FLOP counts, option errors."""

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from layers import registry
from layers.aux import AuxLoss, LayerMetric
from layers.context import LayerContext
from layers.forward_flops import active_params, forward_flops_per_token
from layers.moe import mohd
from tests.foundation_configs import tiny_lm

CTX = LayerContext(d_model=16, d_ff=24)


def _build(ctx=CTX, **options):
  return registry.build("ffn", "mohd", ctx, rngs=nnx.Rngs(0), **{"n_subdims": 8, "tile_size": 4, **options})


def _x(seed=0, shape=(2, 5, 16)):
  return jax.random.normal(jax.random.key(seed), shape)


def _randomize_fusion(layer, seed=3):
  for i, var in enumerate((layer.within, layer.across)):
    var[...] = var[...] + 0.3 * jax.random.normal(jax.random.key(seed + i), var.shape)


def test_docstring_examples_run():
  result = doctest.testmod(mohd)
  assert result.attempted > 0 and result.failed == 0


def test_all_shared_all_active_is_the_dense_swiglu():
  layer = _build(active_fraction=1.0, shared_fraction=1.0, fusion=False)
  assert layer.router is None and layer.alpha == 1.0
  x = np.asarray(_x()).reshape(-1, 16)
  g, u = x @ np.asarray(layer.gate[...]).reshape(16, 24), x @ np.asarray(layer.up[...]).reshape(16, 24)
  down = np.asarray(layer.down[...]).transpose(1, 0, 2).reshape(24, 16)
  np.testing.assert_allclose(layer(jnp.asarray(x)), (g / (1 + np.exp(-g)) * u) @ down, rtol=1e-5, atol=1e-5)


def _monarch_matrix(within, across):
  """The D x D matrix of the fusion, entry by entry: input dim (g, t) -> output (h, u) weighs
  within[g, t, u] * across[u, g, h]."""
  g_count, s = within.shape[:2]
  m = np.zeros((g_count * s, g_count * s))
  for g in range(g_count):
    for t in range(s):  # input dim g * s + t
      for u in range(s):
        for h in range(g_count):  # within group g: t -> u, then at offset u: group g -> h
          m[g * s + t, h * s + u] += within[g, t, u] * across[u, g, h]
  return m


def _direct(layer, x):
  """Per token in numpy: softmax router over the routed sub-dimensions, top-k, sparse read / write, alpha, fusion."""
  s, g_count, sh, k = layer.sub, layer.n_subdims, layer.n_shared, layer.top_k
  gate, up, down = (np.asarray(v[...], np.float64) for v in (layer.gate, layer.up, layer.down))
  fuse = _monarch_matrix(np.asarray(layer.within[...]), np.asarray(layer.across[...]))
  out = []
  for row in np.asarray(x, np.float64):
    logits = row @ np.asarray(layer.router[...])
    p = np.exp(logits - logits.max())
    p /= p.sum()
    coef = {i: 1.0 for i in range(sh)}
    coef.update({sh + j: p[j] for j in np.argsort(-p, kind="stable")[:k]})
    z_g = sum(row[i * s:(i + 1) * s] @ gate[i] for i in coef)
    z_u = sum(row[i * s:(i + 1) * s] @ up[i] for i in coef)
    h = z_g / (1 + np.exp(-z_g)) * z_u
    y = np.zeros(g_count * s)
    for i, c in coef.items():
      y[i * s:(i + 1) * s] = layer.alpha * c * (h @ down[i])
    out.append(y @ fuse)
  return np.stack(out)


@pytest.mark.parametrize("options", [dict(), dict(shared_fraction=0.0),
                                     dict(active_fraction=0.75, shared_fraction=0.5, scale=1.5)])
def test_matches_the_direct_formula(options):
  layer = _build(**options)
  _randomize_fusion(layer)
  x = _x(1).reshape(-1, 16)
  np.testing.assert_allclose(layer(x), _direct(layer, x), rtol=1e-4, atol=1e-5)


@functools.cache
def _value_and_grads(mode, grouped_matmul, shared_fraction):
  layer = _build(mode=mode, grouped_matmul=grouped_matmul, shared_fraction=shared_fraction)
  _randomize_fusion(layer)

  def loss(m, x):
    y, aux, _ = nnx.capture(m, AuxLoss, LayerMetric)(x)
    return jnp.sum(jnp.sin(y)) + sum(jax.tree.leaves(aux))

  return nnx.value_and_grad(loss, argnums=(0, 1))(layer, _x(2))


@pytest.mark.parametrize("grouped_matmul, shared_fraction", [("tiled", 0.75), ("ragged_dot", 0.0)])
def test_grouped_form_equals_the_masked_specification(grouped_matmul, shared_fraction):
  value, grads = _value_and_grads("grouped", grouped_matmul, shared_fraction)
  want_value, want_grads = _value_and_grads("masked", "tiled", shared_fraction)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert float(jnp.abs(grads[0].router[...]).max()) > 0  # the router learns through the gates (and the loss)


def test_balance_loss_and_load_metrics():
  layer = _build(load_balance_weight=0.5)
  x = _x(4).reshape(-1, 16)
  _, aux, metrics = nnx.capture(layer, AuxLoss, LayerMetric)(x)
  logits = np.asarray(x) @ np.asarray(layer.router[...])
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  picks = np.argsort(-p, -1, kind="stable")[:, :layer.top_k]
  f = np.bincount(picks.reshape(-1), minlength=layer.n_routed) / picks.size
  np.testing.assert_allclose(metrics["mohd_subdim_load/0"][0], f, rtol=1e-6)
  np.testing.assert_allclose(aux["mohd_load_balance"][0], 0.5 * layer.n_routed * np.sum(f * p.mean(0)), rtol=1e-5)


@pytest.mark.parametrize("d_model, d_ff, n_subdims", [(16, 24, 8), (1024, 2816, 16)])
def test_active_parameters_and_flops(d_model, d_ff, n_subdims):
  ctx = LayerContext(d_model=d_model, d_ff=d_ff)
  layer = nnx.eval_shape(lambda: _build(ctx, n_subdims=n_subdims))
  n_active = round(0.5 * n_subdims)
  s, routed = d_model // n_subdims, n_subdims - round(0.75 * n_active)
  ffn, router, fusion = 3 * d_model * d_ff, d_model * routed, n_subdims * s * s + s * n_subdims**2
  assert active_params(layer) == pytest.approx(ffn * n_active / n_subdims + router + fusion)
  assert forward_flops_per_token(layer, 64) == pytest.approx(2 * (ffn * n_active / n_subdims + router + fusion))
  total = sum(v.size for _, v in nnx.to_flat_state(nnx.state(layer, nnx.Param)))
  assert total == ffn + router + fusion
  if d_model >= 1024:  # the compression setting: the active parameters of a dense ffn half as wide, within 3%
    half = nnx.eval_shape(lambda: registry.build("ffn", "swiglu", ctx, rngs=nnx.Rngs(0), hidden=d_ff // 2))
    assert active_params(layer) / active_params(half) == pytest.approx(1.0, abs=0.03)


def test_lm_logs_the_active_parameters_of_its_mohd_layers():
  c = tiny_lm()
  c.model.blocks = "(attention, mohd) * 2"
  c.model.options.mohd = dict(n_subdims=8)
  model = nnx.eval_shape(lambda: models.build(c.model, rngs=nnx.Rngs(0)))
  total = sum(v.size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
  saved = sum(3 * 32 * 64 * (1 - 4 / 8) for _ in range(2))  # each layer leaves half its ffn weights unused
  assert active_params(model) == pytest.approx(total - saved)


@pytest.mark.parametrize("options, match", [
  (dict(n_subdims=5), "n_subdims=5 must divide d_model=16"),
  (dict(active_fraction=0.0), "active_fraction=0.0"),
  (dict(shared_fraction=1.5), "shared_fraction=1.5"),
  (dict(mode="sparse"), "unknown mode"),
  (dict(grouped_matmul="dense"), "unknown grouped_matmul"),
])
def test_bad_options_fail_with_the_fix(options, match):
  with pytest.raises(ValueError, match=match):
    _build(**options)
