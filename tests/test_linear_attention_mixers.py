"""Linear-attention mixer layers: bf16 policy, gradients, axes, short conv, gates (the mixer contract:
tests/test_mixers.py)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from layers import registry
from layers.linear_attention.mixers import decay_gate, feature_maps, short_conv
from layers.linear_attention.mixers.retnet import retention_log_decay
from tests.test_mixers import OPTIONS, _inputs, _rel, build, run

# The linear-attention mixers of tests/test_mixers.py (same options), whose shared runs these tests reuse.
NAMES = ["linear_attention", "retnet", "gla", "delta_net", "gated_delta_net", "mamba2"]


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_and_reach_every_parameter(name):
  for path, g in jax.tree_util.tree_leaves_with_path(run(name)["grads"]):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("name", NAMES)
def test_bf16_compute_keeps_fp32_state(name):
  model = build(name, jnp.bfloat16)  # same seed as the fp32 run: same fp32 parameters
  graphdef = nnx.graphdef(model)

  @jax.jit
  def go(params, x):
    model = nnx.merge(graphdef, params)
    y, cache = model.decode(x[:, :1], model.init_cache(x.shape[0], x.shape[1]), jnp.int32(0))
    return model(x), y, cache

  y16, y16_first, cache = go(nnx.state(model), _inputs()[0])
  assert y16.dtype == jnp.bfloat16 and y16_first.dtype == jnp.bfloat16
  assert cache["state"].dtype == jnp.float32
  assert all(c.dtype == jnp.bfloat16 for c in jax.tree.leaves(cache["conv"]))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert np.all(np.isfinite(np.asarray(y16, np.float32)))
  assert _rel(y16, run(name)["full"]) < 5e-2
  assert _rel(y16_first, y16[:, :1]) < 5e-2


# Parameters that weight decay would distort (gate rates, skip, identity-initialised feature maps).
NO_DECAY = {
  "gated_delta_net": ("A_log", "dt_bias"),
  "mamba2": ("A_log", "dt_bias", "D"),
  "linear_attention": ("q_map", "k_map"),  # hedgehog feature maps (OPTIONS)
}


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_has_logical_axes(name):
  model = build(name)
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
  for name in NAMES:
    registry.check_options("mixer", name, {**OPTIONS.get(name, {}), "chunk_size": 8, "mode": "chunk"})
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


def test_short_conv_never_reaches_into_the_previous_document():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 11, 3)).astype(np.float32)
  w = rng.normal(size=(4, 3)).astype(np.float32)
  seg = np.array([[4, 4, 4, 4, 4, 1, 1, 4, 4, 4, 4], [2] + [5] * 10], np.int32)  # 4 again: a new document
  want = np.zeros_like(x)
  for b, bounds in enumerate([(0, 5, 7, 11), (0, 1, 11)]):
    for s, e in itertools.pairwise(bounds):
      want[b, s:e] = np.stack([np.convolve(x[b, s:e, c], w[::-1, c])[: e - s] for c in range(3)], -1)
  y, cache = short_conv.short_causal_conv(jnp.asarray(x), jnp.asarray(w), None, None, jnp.asarray(seg))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  # The cache holds the last document's inputs only: row 0's last document began 4 tokens back.
  np.testing.assert_allclose(cache, x[:, -3:])
  # In two pieces: the second piece's first token continues row 0's document and starts none in row 1.
  y1, c = short_conv.short_causal_conv(jnp.asarray(x[:, :6]), jnp.asarray(w), None, None, jnp.asarray(seg[:, :6]))
  np.testing.assert_array_equal(c[0, :2], 0)  # row 0: only token 5 is of the last document
  y2, _ = short_conv.short_causal_conv(jnp.asarray(x[:, 6:]), jnp.asarray(w), None, c, jnp.asarray(seg[:, 6:]))
  np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), want, rtol=1e-5, atol=1e-5)


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

  graphdef, params = nnx.split(build(name))
  params = jax.tree.map(put, params, is_leaf=lambda v: isinstance(v, nnx.Variable))
  x = jax.device_put(_inputs()[0], NamedSharding(mesh, PartitionSpec("data")))
  y = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, x)
  assert y.sharding.spec[0] == "data"
  assert _rel(y, run(name)["full"]) < 1e-5
