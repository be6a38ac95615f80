"""Learnable activation modules: registry round trip, parameter metadata, presets, version D, FFN use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from layers import registry
from layers.activations import fit
from layers.activations import functional as F
from layers.context import LayerContext

CTX = LayerContext(d_model=16, d_ff=32, dtype=jnp.bfloat16, features=32)
LEARNABLE = {  # name: (options, expected parameter shapes)
  "rational": ({}, {"numerator": (6,), "denominator": (4,)}),
  "group_rational": ({"groups": 4}, {"numerator": (4, 6), "denominator": (4, 4)}),
  "polynorm": ({}, {"weight": (3,), "bias": (1,)}),
  "polyrelu": ({}, {"weight": (3,), "bias": (1,)}),
  "swish_beta": ({}, {"beta": (1,)}),
}


def params_of(module) -> dict:
  return {k: v for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


@pytest.mark.parametrize("name", sorted(LEARNABLE))
def test_registry_round_trip(name):
  options, shapes = LEARNABLE[name]
  act = registry.build("activation", name, CTX, rngs=nnx.Rngs(0), **options)
  params = params_of(act)
  assert {k[-1]: tuple(p.shape) for k, p in params.items()} == shapes
  for p in params.values():
    assert p.get_metadata()["optim_group"] == "activation"
    assert len(p.get_metadata()["axes"]) == p.ndim
    assert p.dtype == CTX.param_dtype
  x = jnp.asarray(np.linspace(-3, 3, 2 * 3 * 32).reshape(2, 3, 32), jnp.bfloat16)
  y = nnx.jit(lambda m, x: m(x))(act, x)
  assert y.shape == x.shape and y.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(y, np.float32)))
  with pytest.raises(ValueError, match="has no option"):
    registry.build("activation", name, CTX, rngs=nnx.Rngs(0), degree=3)


def test_rational_starts_as_its_preset():
  x = jnp.linspace(-3.0, 3.0, 301)
  for init, target in (("leaky_relu", fit.TARGETS["leaky_relu"]), ("tanh", np.tanh)):
    for version in ("A", "B", "C", "N"):
      act = registry.build("activation", "rational", CTX, rngs=nnx.Rngs(0), init=init, version=version)
      err = np.abs(np.asarray(act(x)) - target(np.asarray(x, np.float64))).max()
      assert err <= fit.preset(init, version).max_error + 1e-5, (init, version)


@pytest.mark.parametrize("shared, shapes", [("none", ((8, 6), (8, 4))), ("numerator", ((6,), (8, 4))),
                                            ("denominator", ((8, 6), (4,)))])
def test_group_rational_sharing(shared, shapes):
  act = registry.build("activation", "group_rational", CTX, rngs=nnx.Rngs(0), groups=8, shared=shared,
                       init="gelu")
  assert (act.numerator.shape, act.denominator.shape) == shapes
  x = jnp.linspace(-3.0, 3.0, 64).reshape(2, 32)
  expected = F.rational(x, *(jnp.asarray(c) for c in (fit.preset("gelu").numerator, fit.preset("gelu").denominator)))
  np.testing.assert_allclose(act(x), expected, rtol=1e-5, atol=1e-6)  # every group starts equal


def test_group_rational_bad_options():
  with pytest.raises(ValueError, match="equal groups"):
    registry.build("activation", "group_rational", CTX, rngs=nnx.Rngs(0), groups=5)
  with pytest.raises(ValueError, match="sharing"):
    registry.build("activation", "group_rational", CTX, rngs=nnx.Rngs(0), shared="both")
  with pytest.raises(ValueError, match="unknown rational version"):
    registry.build("activation", "rational", CTX, rngs=nnx.Rngs(0), version="E")


def test_version_d_noise_only_in_training():
  act = registry.build("activation", "rational", CTX, rngs=nnx.Rngs(0), version="D")
  clean = registry.build("activation", "rational", CTX, rngs=nnx.Rngs(0), version="B")
  x = jnp.linspace(-3.0, 3.0, 64)
  y1, y2 = act(x), act(x)
  assert not np.allclose(y1, y2)  # a fresh draw per call
  np.testing.assert_allclose(y1, clean(x), atol=0.1 * float(jnp.abs(clean(x)).max()))
  np.testing.assert_array_equal(nnx.view(act, deterministic=True)(x), clean(x))
  act.eval()
  np.testing.assert_array_equal(act(x), clean(x))
  with pytest.raises(ValueError, match="dropout"):
    registry.build("activation", "rational", CTX, rngs=nnx.Rngs(params=0), version="D")


def test_coefficients_get_gradients():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32)), jnp.float32)
  for name, (options, _) in LEARNABLE.items():
    act = registry.build("activation", name, CTX, rngs=nnx.Rngs(0), **options)
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(jnp.sin(m(x)))))(act)
    for path, g in nnx.to_flat_state(grads):
      assert np.all(np.isfinite(g[...])) and np.any(g[...] != 0), (name, path)


def test_swish_beta_and_polycom_init():
  x = jnp.linspace(-4.0, 4.0, 32)
  swish = registry.build("activation", "swish_beta", CTX, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(swish(x), jax.nn.silu(x), rtol=1e-6)
  per_channel = registry.build("activation", "swish_beta", CTX, rngs=nnx.Rngs(0), per_channel=True, beta=2.0)
  assert per_channel.beta.shape == (32,) and per_channel.beta.get_metadata()["axes"] == ("mlp",)
  np.testing.assert_allclose(per_channel(x), x * jax.nn.sigmoid(2 * x), rtol=1e-6)
  relu = registry.build("activation", "polyrelu", CTX, rngs=nnx.Rngs(0))
  r = np.maximum(np.asarray(x), 0)
  np.testing.assert_allclose(relu(x), (r**3 + r**2 + r) / 3, rtol=1e-5)


def test_polycom_ffn_matches_swiglu_parameters():
  """PolyCom's non-gated FFN 3/2 as wide has SwiGLU's parameter count (plus 4 scalars)."""
  ctx = LayerContext(d_model=16, d_ff=32)
  count = lambda m: sum(p.size for p in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
  swiglu = registry.build("ffn", "swiglu", ctx, rngs=nnx.Rngs(0))
  for act in ("polynorm", "polyrelu"):
    ffn = registry.build("ffn", "mlp", ctx, rngs=nnx.Rngs(0), hidden=48, activation=act)
    assert count(ffn) == count(swiglu) + 4


@pytest.mark.parametrize("activation, options", [("group_rational", {"groups": 4}), ("polynorm", {})])
def test_sharded_ffn_equals_unsharded(activation, options):
  """Hidden features split over the tensor axis: groups and PolyNorm's feature RMS must not notice."""
  from train import mesh as mesh_lib
  from train.mesh import DEFAULT_RULES

  ctx = LayerContext(d_model=16, d_ff=32)
  ffn = registry.build("ffn", "mlp", ctx, rngs=nnx.Rngs(0), activation=activation, activation_options=options)
  graphdef, params = nnx.split(ffn, nnx.Param)
  mesh = mesh_lib.make_mesh({"data": 2, "tensor": 4})
  shardings = mesh_lib.state_shardings(params, DEFAULT_RULES, mesh)
  sharded = jax.device_put(nnx.to_pure_dict(params), shardings)
  assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 16)), jnp.float32)
  fn = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  xs = jax.device_put(x, mesh_lib.batch_sharding(mesh, DEFAULT_RULES))
  np.testing.assert_allclose(fn(sharded, xs), fn(nnx.to_pure_dict(params), x), rtol=1e-5, atol=1e-5)
