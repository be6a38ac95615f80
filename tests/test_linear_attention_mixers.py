"""Linear-attention mixer layers: decode == forward, bf16 policy, gradients, axes, short conv, gates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from layers import registry
from layers.context import LayerContext
from layers.linear_attention.mixers import decay_gate, feature_maps, short_conv
from layers.linear_attention.mixers.retnet import retention_log_decay

B, T, D = 2, 21, 32  # T spans 3 chunks of 8 with padding, so the chunk path really chunks
CHUNK = 8

# name -> (registry name, options); small state sizes, every optional branch switched on somewhere.
MIXERS = {
  "linear_attention": ("linear_attention", {}),
  "linear_attention_hedgehog": ("linear_attention", {"feature_map": "hedgehog", "normalize": True}),
  "retnet": ("retnet", {}),
  "gla": ("gla", {"conv_size": 4}),
  "delta_net": ("delta_net", {"allow_neg_eigval": True}),
  "gated_delta_net": ("gated_delta_net", {}),
  "mamba2": ("mamba2", {"state_size": 8}),
}


def _ctx(dtype=jnp.float32) -> LayerContext:
  return LayerContext(d_model=D, n_heads=2, head_dim=16, dtype=dtype)


def _build(name: str, dtype=jnp.float32, seed: int = 0):
  kind, options = MIXERS[name]
  return registry.build("mixer", kind, _ctx(dtype), rngs=nnx.Rngs(seed), chunk_size=CHUNK, **options)


def _x(seed: int = 1) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), (B, T, D), jnp.float32)


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


def _decode_steps(model, x, cache, start: int):
  """Feed x [B, S, D] one token at a time through decode (lax.scan) from position `start`."""

  def step(cache, inp):
    x_t, t = inp
    y, cache = model.decode(x_t[:, None], cache, t)
    return cache, y[:, 0]

  positions = start + jnp.arange(x.shape[1], dtype=jnp.int32)
  cache, ys = jax.lax.scan(step, cache, (jnp.moveaxis(x, 1, 0), positions))
  return jnp.moveaxis(ys, 0, 1), cache


@functools.cache
def _fp32_run(name: str) -> dict:
  """One jitted call per mixer, shared by the tests below: forward + gradients, token-by-token
  decode from an empty cache, and a chunked prefill of 13 tokens followed by decoding the rest."""
  graphdef, params = nnx.split(_build(name))

  @jax.jit
  def run(params, x):
    def loss(p):
      y = nnx.merge(graphdef, p)(x)
      return jnp.mean(jnp.square(y)), y

    grads, full = jax.grad(loss, has_aux=True)(params)
    model = nnx.merge(graphdef, params)
    empty = model.init_cache(x.shape[0], x.shape[1])
    stepped, cache = _decode_steps(model, x, empty, 0)
    split = 13
    y1, c = model.decode(x[:, :split], empty, jnp.int32(0))
    y2, c = _decode_steps(model, x[:, split:], c, split)
    return dict(full=full, grads=grads, stepped=stepped, prefilled=jnp.concatenate([y1, y2], axis=1),
                cache=cache, cache_prefill=c)

  return run(params, _x())


@pytest.mark.parametrize("name", list(MIXERS))
def test_decode_equals_forward(name):
  r = _fp32_run(name)
  full = r["full"]
  assert full.shape == (B, T, D) and full.dtype == jnp.float32
  assert np.all(np.isfinite(full))
  assert _rel(r["stepped"], full) < 1e-5, _rel(r["stepped"], full)
  assert _rel(r["prefilled"], full) < 1e-5, _rel(r["prefilled"], full)
  # Chunked prefill and one-step decoding end in the same state and conv buffers.
  for a, b in zip(jax.tree.leaves(r["cache"]), jax.tree.leaves(r["cache_prefill"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert r["cache"]["state"].dtype == jnp.float32


@pytest.mark.parametrize("name", list(MIXERS))
def test_gradients_finite_and_reach_every_parameter(name):
  for path, g in jax.tree_util.tree_leaves_with_path(_fp32_run(name)["grads"]):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("name", list(MIXERS))
def test_bf16_compute_keeps_fp32_state(name):
  model = _build(name, jnp.bfloat16)  # same seed as the fp32 run: same fp32 parameters
  graphdef = nnx.graphdef(model)

  @jax.jit
  def run(params, x):
    model = nnx.merge(graphdef, params)
    y, cache = model.decode(x[:, :1], model.init_cache(x.shape[0], x.shape[1]), jnp.int32(0))
    return model(x), y, cache

  y16, y16_first, cache = run(nnx.state(model), _x())
  assert y16.dtype == jnp.bfloat16 and y16_first.dtype == jnp.bfloat16
  assert cache["state"].dtype == jnp.float32
  assert all(c.dtype == jnp.bfloat16 for c in jax.tree.leaves(cache["conv"]))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert np.all(np.isfinite(np.asarray(y16, np.float32)))
  assert _rel(y16, _fp32_run(name)["full"]) < 5e-2
  assert _rel(y16_first, y16[:, :1]) < 5e-2


# Parameters that weight decay would distort (gate rates, skip, identity-initialised feature maps).
NO_DECAY = {
  "gated_delta_net": ("A_log", "dt_bias"),
  "mamba2": ("A_log", "dt_bias", "D"),
  "linear_attention_hedgehog": ("q_map", "k_map"),
}


@pytest.mark.parametrize("name", list(MIXERS))
def test_every_parameter_has_logical_axes(name):
  model = _build(name)
  params = nnx.state(model, nnx.Param)
  leaves = jax.tree.leaves(params, is_leaf=lambda v: isinstance(v, nnx.Variable))
  assert leaves
  for p in leaves:
    axes = p.get_metadata().get("axes")
    assert axes is not None and len(axes) == p[...].ndim, (p, axes)
  groups = {
    jax.tree_util.keystr(path): p.get_metadata().get("optim_group")
    for path, p in jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda v: isinstance(v, nnx.Variable))
  }
  for part in NO_DECAY.get(name, ()):
    tagged = [group for path, group in groups.items() if f"['{part}']" in path]
    assert tagged and all(g == "no_decay" for g in tagged), (part, groups)


def test_registry_options_are_checked():
  for name, (kind, options) in MIXERS.items():
    registry.check_options("mixer", kind, {**options, "chunk_size": 8, "mode": "chunk"})
    assert name
  with pytest.raises(ValueError, match="chunk_sise"):
    registry.check_options("mixer", "gla", {"chunk_sise": 8})


def test_short_conv_matches_numpy_and_decodes_with_cache():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 11, 5)).astype(np.float32)
  w = rng.normal(size=(4, 5)).astype(np.float32)
  bias = rng.normal(size=(5,)).astype(np.float32)
  want = np.stack(
    [np.stack([np.convolve(x[b, :, c], w[::-1, c])[:11] + bias[c] for c in range(5)], -1) for b in range(2)]
  )
  y, cache = short_conv.short_causal_conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(bias))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cache, x[:, -3:])
  # Token by token (and in two pieces) from a cache equals the full convolution.
  c = jnp.zeros((2, 3, 5))
  steps = []
  for t in range(11):
    y_t, c = short_conv.short_causal_conv(jnp.asarray(x[:, t : t + 1]), jnp.asarray(w), jnp.asarray(bias), c)
    steps.append(y_t)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c, x[:, -3:])
  y1, c = short_conv.short_causal_conv(jnp.asarray(x[:, :2]), jnp.asarray(w), None)
  y2, _ = short_conv.short_causal_conv(jnp.asarray(x[:, 2:]), jnp.asarray(w), None, c)
  np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), want - bias, rtol=1e-5, atol=1e-5)


def test_short_conv_module_decode_equals_forward():
  conv = short_conv.ShortConv(6, 4, use_bias=True, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 9, 6))

  @nnx.jit
  def run(conv, x):
    full, _ = conv(x)
    cache = conv.init_cache(2)
    steps = []
    for t in range(9):
      y, cache = conv(x[:, t : t + 1], cache)
      steps.append(y)
    return full, jnp.concatenate(steps, 1)

  full, stepped = run(conv, x)
  np.testing.assert_allclose(stepped, full, rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(full) >= -0.28)  # SiLU output is bounded below by about -0.2785


def test_feature_maps():
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 4))
  fm = feature_maps.FeatureMap("hedgehog", 3, 4, rngs=nnx.Rngs(0))
  phi = np.asarray(fm(x))
  assert fm.out_dim == 8 and phi.shape == (2, 5, 3, 8)
  assert np.all(phi > 0)
  np.testing.assert_allclose(phi[..., :4].sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(phi[..., :4], jax.nn.softmax(x, -1), rtol=1e-6)  # W starts at the identity
  np.testing.assert_allclose(phi[..., 4:], jax.nn.softmax(-x, -1), rtol=1e-6)
  assert np.all(np.asarray(feature_maps.FeatureMap("elu+1", 3, 4, rngs=nnx.Rngs(0))(x)) > 0)
  np.testing.assert_array_equal(feature_maps.FeatureMap("relu", 3, 4, rngs=nnx.Rngs(0))(x), jax.nn.relu(x))
  with pytest.raises(ValueError, match="unknown feature map"):
    feature_maps.FeatureMap("cosformer", 3, 4, rngs=nnx.Rngs(0))


def test_retention_decays():
  want = [1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256]
  np.testing.assert_allclose(np.exp(retention_log_decay(4)), want, rtol=1e-6)


def test_decay_gate_init_and_sign():
  gate = decay_gate.DecayGate(512, a_range=(1.0, 16.0), rngs=nnx.Rngs(0))
  a = np.exp(np.asarray(gate.A_log[...]))
  dt = np.asarray(jax.nn.softplus(gate.dt_bias[...]))
  assert a.min() >= 1.0 - 1e-5 and a.max() <= 16.0 + 1e-4 and a.std() > 3
  assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
  assert np.median(dt) < 0.02  # log-uniform, not uniform
  g, dt_x = gate(jnp.full((1, 3, 512), 5.0))
  assert g.dtype == jnp.float32 and np.all(np.asarray(g) < 0)
  np.testing.assert_allclose(g, -a * np.asarray(dt_x), rtol=1e-6)


@pytest.mark.parametrize("name", ["gated_delta_net", "mamba2"])
def test_sharded_equals_unsharded(name):
  """Heads over a 2-way tensor axis, batch over a 2-way data axis: same output as one device."""
  mesh = jax.make_mesh((2, 2), ("data", "tensor"), axis_types=(AxisType.Auto,) * 2, devices=jax.devices()[:4])
  rules = {"heads": "tensor"}

  def put(v: nnx.Variable) -> nnx.Variable:
    spec = PartitionSpec(*(rules.get(a) if a else None for a in v.get_metadata()["axes"]))
    return v.replace(jax.device_put(v[...], NamedSharding(mesh, spec)))

  graphdef, params = nnx.split(_build(name))
  params = jax.tree.map(put, params, is_leaf=lambda v: isinstance(v, nnx.Variable))
  x = jax.device_put(_x(), NamedSharding(mesh, PartitionSpec("data")))
  y = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, x)
  assert y.sharding.spec[0] == "data"
  assert _rel(y, _fp32_run(name)["full"]) < 1e-5
