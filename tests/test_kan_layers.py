"""KAN layers: KANLinear (grid update / extension, regulariser), FourierKAN, KAN / GR-KAN ffns, KArAt."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from layers import registry
from layers.aux import AuxLoss
from layers.context import LayerContext
from layers.kan import functional as F
from layers.kan.fourier_kan import FourierKAN
from layers.kan.kan_linear import KANLinear
from layers.kan.karat import fourier_ka_operator

CTX = LayerContext(d_model=32, n_heads=2, d_ff=128)


def n_params(module) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(module, nnx.Param))))


def rel_rmse(a, b) -> float:
  return float(jnp.sqrt(jnp.mean((a - b) ** 2)) / jnp.sqrt(jnp.mean(b**2)))


@pytest.mark.parametrize("kind,name,options", [
  ("ffn", "kan", {}), ("ffn", "fourier_kan", {"smooth_init": True}), ("ffn", "gr_kan", {}),
  ("mixer", "karat", {"max_len": 8, "causal": True, "mode": "universal"}),
])
def test_registered_layers_shape_dtype_axes(kind, name, options):
  ctx = LayerContext(d_model=32, n_heads=2, d_ff=128, dtype=jnp.bfloat16)
  layer = registry.build(kind, name, ctx, rngs=nnx.Rngs(0), **options)
  x = jax.random.normal(jax.random.key(0), (2, 8, 32), jnp.bfloat16)
  y = nnx.jit(lambda m, x: m(x))(layer, x)
  assert y.shape == x.shape and y.dtype == jnp.bfloat16
  assert bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))
  for path, p in nnx.to_flat_state(nnx.state(layer, nnx.Param)):
    assert p.dtype == jnp.float32, path
    assert len(p.get_metadata()["axes"]) == p.ndim, path


@pytest.mark.parametrize("name,bias,tol", [("kan", False, 0.03), ("fourier_kan", False, 0.03),
                                           ("gr_kan", True, 0.01)])
def test_ffns_match_mlp_parameter_count(name, bias, tol):
  mlp = n_params(registry.build("ffn", "mlp", CTX, rngs=nnx.Rngs(0), use_bias=bias))
  kan = n_params(registry.build("ffn", name, CTX, rngs=nnx.Rngs(0)))
  assert abs(kan - mlp) / mlp < tol, (kan, mlp)


def test_kan_linear_grid_update_and_extension_keep_function():
  layer = KANLinear(3, 4, grid_size=5, rngs=nnx.Rngs(0))
  x = jnp.tanh(jax.random.normal(jax.random.key(1), (256, 3)))
  before = layer(x)
  layer.update_grid(x)
  assert layer.grid_size == 5 and not np.allclose(layer.grid[...], F.uniform_grid(3, 5, 3))
  assert rel_rmse(layer(x), before) < 2e-2
  layer.extend_grid(x, 10)
  assert layer.grid_size == 10 and layer.spline_kernel.shape == (3, 13, 4)
  assert layer.spline_kernel.get_metadata()["axes"] == ("embed", None, "mlp")
  assert rel_rmse(layer(x), before) < 2e-2
  with pytest.raises(ValueError, match="coarse -> fine"):
    layer.extend_grid(x, 5)


def test_kan_regulariser_is_sown_and_differentiable():
  layer = KANLinear(3, 2, reg_weight=0.5, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (16, 3))
  _, aux = nnx.capture(layer, AuxLoss)(x)
  (value,) = jax.tree.leaves(aux)
  kernels = (layer.base_kernel[...], layer.spline_kernel[...], layer.grid[...])
  edge = F.kan_edge_activations_mean_abs(x, *kernels, 3)
  np.testing.assert_allclose(value, 0.5 * F.kan_regularizer(edge), rtol=1e-5)

  def reg(model):
    _, aux = nnx.capture(model, AuxLoss)(x)
    return sum(jax.tree.leaves(aux))

  grads = nnx.grad(reg)(layer)
  assert float(jnp.abs(grads.spline_kernel[...]).sum()) > 0
  _, aux = nnx.capture(KANLinear(3, 2, rngs=nnx.Rngs(0)), AuxLoss)(x)
  assert not jax.tree.leaves(aux)  # reg_weight 0: nothing sown


def test_fourier_kan_inits():
  plain = FourierKAN(64, 64, grid_size=4, rngs=nnx.Rngs(0)).coeffs[...]
  smooth = FourierKAN(64, 64, grid_size=4, smooth_init=True, rngs=nnx.Rngs(0)).coeffs[...]
  np.testing.assert_allclose(plain.std(), 1 / np.sqrt(64 * 4), rtol=0.05)
  stds = smooth.std(axis=(0, 1, 3))  # per frequency m = 1..4
  np.testing.assert_allclose(stds, 1 / (8 * np.arange(1, 5) ** 2), rtol=0.1)


def test_gr_kan_variance_preserving_init_and_switch():
  ctx = LayerContext(d_model=64, d_ff=256)
  ffn = registry.build("ffn", "gr_kan", ctx, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (1024, 64))
  np.testing.assert_allclose(ffn.act1(x), x, atol=1e-2)  # identity init
  h = ffn.fc1(ffn.act1(x))
  assert 0.8 < float(jnp.var(h)) < 1.25
  assert 0.8 < float(jnp.var(ffn(x))) < 1.25
  fixed = registry.build("ffn", "gr_kan", ctx, rngs=nnx.Rngs(0), init_std=0.02)
  np.testing.assert_allclose(fixed.fc2.kernel[...].std(), 0.02, rtol=0.15)
  assert float(ffn.fc2.kernel[...].std()) > 2 * 0.02


def _karat(**options):
  return registry.build("mixer", "karat", CTX, rngs=nnx.Rngs(0), max_len=12, **options)


def test_karat_softmax_operator_is_attention():
  layer = _karat(operator="softmax")
  x = jax.random.normal(jax.random.key(4), (2, 10, 32))
  q, k, v = jnp.split(layer.qkv(x).reshape(2, 10, 6, 16), 3, axis=2)
  ref = layer.o(jax.nn.dot_product_attention(q, k, v).reshape(2, 10, 32))
  np.testing.assert_allclose(layer(x), ref, atol=1e-5, rtol=1e-5)


def test_karat_causal_ignores_future():
  layer = _karat(causal=True)
  x = jax.random.normal(jax.random.key(5), (1, 9, 32))
  x2 = x.at[:, 6:].set(jax.random.normal(jax.random.key(6), (1, 3, 32)))
  fn = nnx.jit(lambda m, x: m(x))
  y, y2 = fn(layer, x), fn(layer, x2)
  np.testing.assert_allclose(y[:, :6], y2[:, :6], atol=1e-5)
  assert not np.allclose(y[:, 6:], y2[:, 6:])


@pytest.mark.parametrize("operator", ["fourier_kan", "softmax"])
def test_karat_decode_equals_causal_forward(operator):
  """Token-by-token decoding with a KV cache (cache shorter than max_len) reproduces the causal forward."""
  layer = _karat(causal=True, operator=operator)
  x = jax.random.normal(jax.random.key(9), (2, 9, 32))

  def decode_all(m, x):
    def step(cache, xt_pos):
      y, cache = m.decode(xt_pos[0][:, None], cache, xt_pos[1])
      return cache, y[:, 0]
    _, ys = jax.lax.scan(step, m.init_cache(x.shape[0], 10), (jnp.moveaxis(x, 1, 0), jnp.arange(x.shape[1])))
    return jnp.moveaxis(ys, 0, 1)

  np.testing.assert_allclose(nnx.jit(decode_all)(layer, x), nnx.jit(lambda m, x: m(x))(layer, x), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match="max_len"):
    layer.init_cache(1, 13)
  with pytest.raises(NotImplementedError, match="causal"):
    _karat().decode(x[:, :1], layer.init_cache(2, 4), jnp.int32(0))


def test_karat_operator_matches_dense_definition_and_max_len():
  layer = _karat()
  op = layer.operator
  s = jax.random.normal(jax.random.key(7), (1, 2, 5, 5))
  m = jnp.arange(1, 4)
  phi = (jnp.einsum("bhtsg,hsgr->bhtr", jnp.cos(s[..., None] * m), op.coeffs[:, 0, :5])
         + jnp.einsum("bhtsg,hsgr->bhtr", jnp.sin(s[..., None] * m), op.coeffs[:, 1, :5]))
  np.testing.assert_allclose(op(s, None), jnp.einsum("bhtr,hrs->bhts", phi, op.proj[:, :, :5]), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match="max_len"):
    layer(jnp.zeros((1, 13, 32)))


@pytest.mark.parametrize("n_heads,max_len", [(2, 12), (8, 40)])
def test_karat_init_gain_sets_the_initial_row_norm(n_heads, max_len):
  """At init sqrt(mean_i sum_j A_ij^2) = init_gain (default 0.05) whatever the heads and length: the operator's
  output starts at init_gain times the values' scale (it was 1 / sqrt(n_heads), the head axis counted as fan-in)."""
  ctx = LayerContext(d_model=32, n_heads=n_heads, d_ff=128)
  s = jax.random.normal(jax.random.key(14), (4, n_heads, max_len, max_len))
  for options, gain in (({}, 0.05), ({"init_gain": 0.5}, 0.5)):
    layer = registry.build("mixer", "karat", ctx, rngs=nnx.Rngs(0), max_len=max_len, **options)
    w = layer.operator(s, None)
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(jnp.sum(w**2, -1))), gain, rtol=0.2)


def test_karat_l1_normalize_divides_each_row_by_its_l1_norm():
  """normalize="l1": A_ij / sum_j |A_ij| over the visible keys (signs kept), masked keys stay zero."""
  s = jax.random.normal(jax.random.key(11), (2, 3, 5, 5))
  coeffs = jax.random.normal(jax.random.key(12), (3, 2, 5, 4, 6))
  proj = jax.random.normal(jax.random.key(13), (3, 6, 5))
  causal = jnp.tril(jnp.ones((5, 5), bool))
  raw = fourier_ka_operator(s, coeffs, proj, causal)
  w = fourier_ka_operator(s, coeffs, proj, causal, normalize="l1")
  np.testing.assert_allclose(w, raw / jnp.abs(raw).sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jnp.abs(w).sum(-1), 1.0, rtol=1e-5)
  assert np.all(w[..., ~causal] == 0) and np.any(w < 0)
  layer = _karat(normalize="l1")
  assert layer.operator.normalize == "l1"
  with pytest.raises(ValueError, match="normalize"):
    _karat(normalize="softmax")


def test_karat_bidirectional_packed_documents_equal_documents_alone():
  """Bidirectional KArAt on a packed row: each document sees all of itself and nothing else, its keys'
  operator parameters taken at their positions in the document (the causal case: tests/test_mixers.py)."""
  layer = _karat()
  x = jax.random.normal(jax.random.key(10), (1, 10, 32))
  fn = nnx.jit(lambda m, x, s, p: m(x, segment_ids=s, positions=p))
  y = fn(layer, x, jnp.array([[4] * 4 + [9] * 6]), None)
  np.testing.assert_allclose(y[:, :4], fn(layer, x[:, :4], None, None), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y[:, 4:], fn(layer, x[:, 4:], None, None), rtol=1e-5, atol=1e-5)
  # A key position past max_len=12 reads NaN parameters: loud, never clamped to the last position.
  assert np.all(np.isnan(fn(layer, x, None, jnp.arange(10)[None] + 5)))


def _shard_state(state, mesh):
  """Put each variable on `mesh` by its logical axes (mlp / heads -> tensor, others replicated)."""
  from jax.sharding import NamedSharding, PartitionSpec

  def spec(var):
    axes = var.get_metadata().get("axes", (None,) * var.ndim)
    return PartitionSpec(*["tensor" if a in ("mlp", "heads") else None for a in axes])

  flat = nnx.to_flat_state(state)
  return nnx.from_flat_state([(path, jax.device_put(var[...], NamedSharding(mesh, spec(var)))) for path, var in flat])


def test_sharded_equals_unsharded():
  """B-spline KAN ffn with its kernels and grid sharded over "tensor" by their logical axes."""
  from jax.sharding import NamedSharding, PartitionSpec

  layer = registry.build("ffn", "kan", CTX, rngs=nnx.Rngs(0), hidden=16)
  graphdef, state = nnx.split(layer)
  x = jax.random.normal(jax.random.key(8), (4, 8, 32))
  fn = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  mesh = jax.make_mesh((4, 2), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
  sharded = _shard_state(state, mesh)
  assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded))
  np.testing.assert_allclose(fn(sharded, xs), fn(state, x), rtol=1e-5, atol=1e-5)
