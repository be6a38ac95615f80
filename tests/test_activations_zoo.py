"""The issue-21 activations and EvoNorm: closed forms (numpy, written from the papers' formulas), gradients,
the custom HeLU gradient, registry round trips, SIREN's init in the MLP, EvoNorm in the conv net and ViT."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from layers import registry
from layers.activations import functional as F
from layers.context import LayerContext

CTX = LayerContext(d_model=8, features=8)
X = np.linspace(-4.0, 4.0, 81) + 0.0137  # avoids the kinks at 0 and ±β


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


CLOSED_FORMS = {  # name: (options, numpy reference of the activation at init)
  "apa": ({"kappa": 1.5, "lam": 0.5}, lambda x: (0.5 * np.exp(-1.5 * x) + 1) ** (-1 / 0.5)),
  "aglu": ({}, lambda x: x * sigmoid(x)),
  "crrelu": ({"eps": 0.3}, lambda x: np.maximum(x, 0) + 0.3 * x * np.exp(-x**2 / 2)),
  "smelu": ({"beta": 1.5}, lambda x: np.where(x <= -1.5, 0, np.where(x >= 1.5, x, (x + 1.5) ** 2 / 6))),
  "helu": ({}, lambda x: np.maximum(x, 0)),
  "snake": ({"a": 2.0}, lambda x: x + np.sin(2 * x) ** 2 / 2),
  "sine": ({"omega": 3.0}, lambda x: np.sin(3 * x)),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_closed_form_and_registry(name):
  options, ref = CLOSED_FORMS[name]
  act = registry.build("activation", name, CTX, rngs=nnx.Rngs(0), **options)
  x = jnp.asarray(np.stack([X] * 8, -1), jnp.float32)
  np.testing.assert_allclose(act(x)[:, 0], ref(X), rtol=2e-5, atol=2e-6)
  y16 = act(x.astype(jnp.bfloat16))
  assert y16.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="has no option"):
    registry.build("activation", name, CTX, rngs=nnx.Rngs(0), degree=3)


def test_apa_limits():
  """λ = 1 is the sigmoid σ(κx); λ -> 0 approaches the Gumbel CDF exp(-e^{-κx})."""
  x = jnp.asarray(X)
  np.testing.assert_allclose(F.apa(x, jnp.array(2.0), jnp.array(1.0)), sigmoid(2 * X), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(F.apa(x, jnp.array(1.0), jnp.array(1e-4)), np.exp(-np.exp(-X)), atol=2e-4)
  assert np.all(np.isfinite(F.apa(jnp.array([-1e4, 1e4]), jnp.array(1.0), jnp.array(0.5))))


def test_generalized_smelu_is_c1():
  """Value and slope continuous at both knees, the prescribed slopes outside, SmeLU as the special case."""
  kw = dict(alpha=0.5, beta=2.0, slope_left=-0.2, slope_right=1.5, offset=0.3)
  f = lambda x: F.generalized_smelu(x, **kw)  # noqa: E731
  for knee in (-0.5, 2.0):
    lo, hi = jnp.float32(knee - 1e-3), jnp.float32(knee + 1e-3)
    assert abs(float(f(hi) - f(lo))) < 5e-3
    np.testing.assert_allclose(jax.grad(f)(lo), jax.grad(f)(hi), atol=2e-3)
  np.testing.assert_allclose(jax.grad(f)(jnp.float32(-3.0)), -0.2, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(f)(jnp.float32(5.0)), 1.5, rtol=1e-6)
  np.testing.assert_allclose(f(jnp.float32(-0.5)), 0.3, rtol=1e-6)
  x = jnp.asarray(X, jnp.float32)
  np.testing.assert_allclose(F.generalized_smelu(x, 1.5, 1.5), CLOSED_FORMS["smelu"][1](X), rtol=1e-5, atol=1e-6)


def test_helu_custom_gradient():
  """Forward ReLU; backward passes the gradient for x > -alpha (hysteresis), not only x > 0."""
  x = jnp.array([-1.0, -0.06, -0.04, -0.01, 0.0, 0.5])
  np.testing.assert_array_equal(F.helu(x, 0.05), jax.nn.relu(x))
  np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(F.helu(x, 0.05)))(x), [0, 0, 1, 1, 1, 1])


def test_gradients():
  with jax.enable_x64(True):
    x = jnp.asarray(X)
    k, lam, eps, a = (jnp.asarray(v) for v in (1.3, 0.7, 0.2, 1.7))
    check_grads(F.apa, (x, k, lam), order=1, modes=("rev",), eps=1e-6)
    check_grads(F.aglu, (x, k, lam), order=1, modes=("rev",), eps=1e-6)
    check_grads(F.crrelu, (x, eps), order=1, modes=("rev",), eps=1e-6)
    check_grads(F.snake, (x, a), order=1, modes=("rev",), eps=1e-6)
    check_grads(lambda x: F.generalized_smelu(x, 0.5, 2.0, -0.2, 1.5, 0.3), (x,), order=1, modes=("rev",),
                eps=1e-6)


def test_learnable_parameters_are_tagged():
  for name, shapes in (("apa", {"kappa": (1,), "lam": (1,)}), ("aglu", {"kappa": (8,), "lam": (8,)}),
                       ("crrelu", {"eps": (1,)}), ("snake", {"a": (8,)})):
    options = {"per_channel": True} if name == "aglu" else {}
    act = registry.build("activation", name, CTX, rngs=nnx.Rngs(0), **options)
    params = dict(nnx.to_flat_state(nnx.state(act, nnx.Param)))
    assert {k[-1]: tuple(p.shape) for k, p in params.items()} == shapes, name
    assert all(p.get_metadata()["optim_group"] == "activation" for p in params.values())
  assert not nnx.state(registry.build("activation", "snake", CTX, rngs=nnx.Rngs(0), learnable=False), nnx.Param)
  with pytest.raises(ValueError, match="a > 0"):
    registry.build("activation", "snake", CTX, rngs=nnx.Rngs(0), a=0.0)


def test_siren_init_in_the_mlp():
  """First Linear ~ U(-1/n, 1/n), the next ones ~ U(-sqrt(6/n)/ω, sqrt(6/n)/ω)."""
  from models.mlp import MLP, mlp_model_config

  cfg = mlp_model_config(hidden=(256, 256), activation="sine", n_outputs=3, in_features=2)
  cfg.options = ml_collections.ConfigDict({"sine": {"omega": 30.0}})
  model = MLP(cfg, rngs=nnx.Rngs(0))
  bounds = [1 / 2, np.sqrt(6 / 256) / 30, np.sqrt(6 / 256) / 30]
  for layer, bound in zip(model.layers, bounds):
    w = np.asarray(layer.kernel[...])
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound


def test_evonorm_s0_closed_form():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 8)).astype(np.float32)
  norm = registry.build("norm", "evonorm_s0", CTX, rngs=nnx.Rngs(0), groups=2)
  norm.v[...] = jnp.asarray(rng.normal(size=8), jnp.float32)
  v = np.asarray(norm.v[...])
  g = x.reshape(2, 5, 2, 4)
  std = np.sqrt(g.var(axis=(1, 3), keepdims=True) + 1e-5)
  expected = (g * sigmoid(v.reshape(2, 4) * g) / std).reshape(x.shape)
  np.testing.assert_allclose(norm(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="groups"):
    registry.build("norm", "evonorm_s0", CTX, rngs=nnx.Rngs(0), groups=3)


def test_evonorm_b0_batch_statistics():
  """Training: batch variance per channel, running average updated; evaluation: the running average."""
  rng = np.random.default_rng(1)
  x = (rng.normal(size=(4, 6, 8)) * 3).astype(np.float32)
  norm = registry.build("norm", "evonorm_b0", CTX, rngs=nnx.Rngs(0))
  y = norm(jnp.asarray(x))
  bvar = x.var(axis=(0, 1))
  inst = np.sqrt(x.var(axis=1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(y, x / np.maximum(np.sqrt(bvar + 1e-5), x + inst), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(norm.running_var[...], 0.9 + 0.1 * bvar, rtol=1e-5)
  evaluation = nnx.view(norm, deterministic=True)
  running = np.asarray(norm.running_var[...])
  np.testing.assert_allclose(evaluation(jnp.asarray(x)), x / np.maximum(np.sqrt(running + 1e-5), x + inst),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(norm.running_var[...], running)  # evaluation leaves the statistics alone
  with pytest.raises(ValueError, match="spatial"):
    norm(jnp.ones((4, 8)))


def test_evonorm_in_convnet_and_vit():
  from models.mlp import ConvNet, convnet_model_config
  from models.vit import ViT, vit_model_config

  cfg = convnet_model_config(norm="evonorm_s0", spatial=(16,), channels=(4, 8), dense=(16,))
  cfg.options = ml_collections.ConfigDict({"evonorm_s0": {"groups": 2}})
  net = ConvNet(cfg, rngs=nnx.Rngs(0))
  assert type(net.conv_acts[0]).__name__ == "EvoNormS0"
  assert net(jnp.ones((2, 16, 1))).shape == (2, 10)
  for norm in ("evonorm_b0", "evonorm_s0"):
    vcfg = vit_model_config("deit_t", image_size=(8, 8), patch_size=4, n_classes=3)
    vcfg.update(d_model=32, n_heads=2, d_ff=64, blocks="(softmax, mlp) * 1", norm=norm)
    vit = ViT(vcfg, rngs=nnx.Rngs(0))
    out = vit(jax.random.normal(jax.random.key(0), (2, 8, 8, 3)))
    assert out.shape == (2, 3) and np.all(np.isfinite(out))


def velu_reference(x, lam=1.0, alpha=0.1, beta1=0.1, beta2=0.1, gamma=0.1, momentum=0.9, eps=1e-6):
  """VeLU written from the authors' formula in numpy (float64): the output and the unscaled activation."""
  x = np.asarray(x, np.float64)
  inv_rms = 1 / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps)
  mix = np.arctan(beta1 * x) + np.arcsin(np.clip(beta2 * x, -1, 1))
  a = x * sigmoid(alpha * mix) * (1 + gamma * np.tanh(momentum * inv_rms))
  return lam * a, a


def test_velu_closed_form_and_w2_regulariser():
  from layers.aux import AuxLoss

  opts = dict(alpha=2.0, beta1=1.0, beta2=0.7, gamma=0.3, momentum=0.9)
  act = registry.build("activation", "velu", CTX, rngs=nnx.Rngs(0), lambda_ot=0.5, **opts)
  act.lam[...] = jnp.array([1.7])
  x = np.random.default_rng(0).normal(size=(3, 5, 8)) * 2  # |0.7 x| > 1 on some entries: the clip matters
  y, aux = nnx.capture(act, AuxLoss)(jnp.asarray(x, jnp.float32))
  ref, a = velu_reference(x, 1.7, **opts)
  np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-6)
  w2 = a.mean() ** 2 + (a.std() - 1) ** 2
  np.testing.assert_allclose(aux["velu_w2"].get_value()[0], 0.5 * w2, rtol=1e-5)
  np.testing.assert_allclose(act(x[:1].astype(np.float32)), ref[:1], rtol=2e-5, atol=2e-6)  # rows: own stats
  quiet = registry.build("activation", "velu", CTX, rngs=nnx.Rngs(0), lambda_ot=0.0)
  assert not nnx.capture(quiet, AuxLoss)(jnp.ones((2, 8)))[1]
  assert act(jnp.ones((2, 8), jnp.bfloat16)).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="lambda_ot"):
    registry.build("activation", "velu", CTX, rngs=nnx.Rngs(0), lambda_ot=-1.0)


def test_velu_gradients():
  """Reverse-mode gradients (x, λ, through the RMS and the W2 term) match finite differences; where |β₂x| >= 1
  the clipped asin passes a zero gradient, never inf / NaN."""
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6)))
    kw = dict(alpha=2.0, beta1=1.0, beta2=0.3, gamma=0.3)

    def loss(x, lam):
      y, a = F.velu(x, lam, **kw)
      return jnp.sum(jnp.sin(y)) + F.w2_to_standard_normal(a)

    check_grads(loss, (x, jnp.asarray(1.3)), order=1, modes=("rev",), eps=1e-6)
    edge = jnp.array([[-1 / 0.3, -5.0, 0.0, 5.0, 1 / 0.3]])
    g = jax.grad(lambda x: jnp.sum(F.velu(x, jnp.asarray(1.0), **kw)[0]))(edge)
    assert np.all(np.isfinite(g))
