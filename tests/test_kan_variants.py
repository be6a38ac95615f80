"""AF-KAN (activation-function bases), S-KAN (per-node selection among activation spaces) and FKAN (Fourier-KAN
first layer): closed forms, gradients, per-sample normalisation, selection and pruning, registry and MLP use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from layers import registry
from layers.context import LayerContext
from layers.kan.af_kan import AFKANLinear, af_kan_basis


def test_relu_basis_is_relu_kan():
  """f = relu: 16 (relu(x - s) relu(e - x))² / (e - s)⁴, peak 1 at the centre, 0 outside [s, e]."""
  x = np.linspace(-2, 2, 81)[:, None]
  s, e = np.array([[-0.5, 0.0]]), np.array([[0.5, 1.5]])
  ref = 16 * (np.maximum(x[..., None] - s, 0) * np.maximum(e - x[..., None], 0)) ** 2 / (e - s) ** 4
  np.testing.assert_allclose(af_kan_basis(jnp.asarray(x), jnp.asarray(s), jnp.asarray(e)), ref, rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(af_kan_basis(jnp.zeros((1, 1)), jnp.asarray(s), jnp.asarray(e))[0, 0, 0], 1.0)


def test_af_kan_gradients_and_per_sample_normalisation():
  layer = AFKANLinear(3, 2, grid_size=3, order=2, function="silu", normalize=True, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (6, 3))
  np.testing.assert_allclose(layer(x[:2]), layer(x)[:2], rtol=1e-5)  # a sample's output ignores its batch
  with jax.enable_x64(True):
    layer = AFKANLinear(3, 2, grid_size=3, order=2, function="silu", normalize=True, dtype=jnp.float64,
                        param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)
    fn = lambda p, x: nnx.merge(graphdef, p)(x)  # noqa: E731
    check_grads(fn, (params, jnp.asarray(x, jnp.float64) * 0.7), order=1, modes=("rev",), eps=1e-6)


def test_af_kan_ffn_and_mlp_layers():
  ctx = LayerContext(d_model=16, d_ff=64)
  ffn = registry.build("ffn", "af_kan", ctx, rngs=nnx.Rngs(0), function="relu")
  assert ffn(jnp.ones((2, 5, 16))).shape == (2, 5, 16)
  n_params = sum(p.size for p in jax.tree.leaves(nnx.state(ffn, nnx.Param)))
  assert abs(n_params - 2 * 16 * 64) / (2 * 16 * 64) < 0.5  # about an MLP's count (plus bounds and biases)

  from models.mlp import MLP, mlp_model_config

  for layer in ("af_kan", "fkan"):
    cfg = mlp_model_config(hidden=(16, 16), layer=layer, activation="relu", n_outputs=1, in_features=2)
    model = MLP(cfg, rngs=nnx.Rngs(0))
    kinds = [type(m).__name__ for m in model.layers]
    expected = ["AFKANLinear"] * 3 if layer == "af_kan" else ["FourierKAN", "Linear", "Linear"]
    assert kinds == expected, kinds
    graphdef, params = nnx.split(model, nnx.Param)
    grads = jax.grad(lambda p, g=graphdef: jnp.sum(nnx.merge(g, p)(jnp.ones((4, 2))) ** 2))(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_fkan_matches_formula():
  """FKAN's MLP from its formula in numpy: a Fourier-KAN first layer
  h_o = Σ_i Σ_m C0[i,m,o] cos(m x_i) + C1[i,m,o] sin(m x_i) + b_o, the activation, then Linear layers."""
  from models.mlp import MLP, mlp_model_config

  cfg = mlp_model_config(hidden=(6, 5), layer="fkan", activation="tanh", n_outputs=2, in_features=3, grid_size=4)
  model = MLP(cfg, rngs=nnx.Rngs(1))
  nnx.update(model, jax.tree.map(lambda p: p + 0.1, nnx.state(model, nnx.Param)))  # non-zero biases
  x = np.random.default_rng(0).uniform(-3, 3, (7, 3))
  c, b = (np.asarray(v[...], np.float64) for v in (model.layers[0].coeffs, model.layers[0].bias))
  m = np.arange(1, 5)
  mx = x[:, :, None] * m  # [N, in, G]
  h = np.tanh(np.einsum("nim,imo->no", np.cos(mx), c[0]) + np.einsum("nim,imo->no", np.sin(mx), c[1]) + b)
  for i, layer in enumerate(model.layers[1:]):
    h = h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)
    h = np.tanh(h) if i == 0 else h
  np.testing.assert_allclose(model(jnp.asarray(x, jnp.float32)), h, rtol=2e-5, atol=2e-5)


def skan_reference(x, spaces, kernels, logits, mask, grid_size=5, order=3, grid_range=(-1.0, 1.0)):
  """S-KAN from its formula in numpy / scipy (float64): y_j = Σ_s softmax_s(θ_:j)[s] Σ_ic K_s[i,c,j] φ_sc(x_i)."""
  from scipy.interpolate import BSpline

  lo, hi = grid_range
  h = (hi - lo) / grid_size
  knots = lo + h * np.arange(-order, grid_size + order + 1)
  n_b = grid_size + order
  centres = np.linspace(lo, hi, grid_size + order)

  def feats(space, x):  # x [N, in] -> [N, in, n]
    if space == "bspline":
      design = BSpline.design_matrix(x.ravel(), knots, order, extrapolate=True).toarray()  # x inside the grid
      return np.concatenate([(x / (1 + np.exp(-x)))[..., None], design.reshape(*x.shape, n_b)], -1)
    if space == "chebyshev":
      return np.polynomial.chebyshev.chebvander(np.tanh(x), grid_size + order - 1)
    if space == "rbf":
      return np.exp(-(((x[..., None] - centres) / (centres[1] - centres[0])) ** 2))
    m = np.arange(1, grid_size + 1)
    return np.concatenate([np.cos(x[..., None] * m), np.sin(x[..., None] * m)], -1)

  theta = np.where(mask, logits, -np.inf)
  w = np.exp(theta - theta.max(0)) / np.exp(theta - theta.max(0)).sum(0)
  return sum(np.einsum("nic,icj->nj", feats(s, x), kernels[s]) * w[i] for i, s in enumerate(spaces))


def _skan_layer(**kw):
  from layers.kan.s_kan import SKANLinear

  layer = SKANLinear(3, 4, rngs=nnx.Rngs(0), **kw)
  layer.logits[...] = jax.random.normal(jax.random.key(5), layer.logits.shape)
  return layer


def test_s_kan_matches_formula_and_selects_then_prunes():
  layer = _skan_layer()
  x = np.random.default_rng(2).uniform(-0.95, 0.95, size=(6, 3))
  kernels = {s: np.asarray(k[...], np.float64) for s, k in layer.kernels.items()}
  logits = np.asarray(layer.logits[...], np.float64)
  ref = skan_reference(x, layer.spaces, kernels, logits, np.ones_like(logits, bool))
  np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), ref, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="select"):
    layer.prune()
  layer.select()  # stage 2: each node keeps its largest-θ space
  mask = np.asarray(layer.mask[...])
  np.testing.assert_array_equal(mask, logits == logits.max(0))
  selected = skan_reference(x, layer.spaces, kernels, logits, mask)
  np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), selected, rtol=1e-4, atol=1e-5)
  grads = nnx.grad(lambda m, x: jnp.sum(m(x) ** 2))(layer, jnp.asarray(x, jnp.float32))
  np.testing.assert_array_equal(grads.logits[...], 0.0)  # a selected node's weight is exactly 1
  before = sum(p.size for p in jax.tree.leaves(nnx.state(layer, nnx.Param)))
  layer.prune()  # stage 3: same function, only the selected (space, node) columns left
  np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), selected, rtol=1e-4, atol=1e-5)
  kept = sum(k[...].size for k in layer.kernels.values())
  assert kept == sum(3 * kernels[s].shape[1] * m.sum() for s, m in zip(("bspline", "chebyshev", "rbf", "fourier"),
                                                                        mask)) < before
  with pytest.raises(ValueError, match="spaces"):
    _skan_layer(spaces=("bspline", "splines"))


def test_s_kan_gradients():
  with jax.enable_x64(True):
    layer = _skan_layer(dtype=jnp.float64, param_dtype=jnp.float64)
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    fn = lambda p, x: nnx.merge(graphdef, p, rest)(x)  # noqa: E731
    x = jnp.asarray(np.random.default_rng(3).uniform(-0.9, 0.9, size=(5, 3)))
    check_grads(fn, (params, x), order=1, modes=("rev",), eps=1e-6)


def test_s_kan_selects_through_the_step_hook_in_ffn_and_mlp():
  import ml_collections

  from layers.aux import end_step
  from layers.kan import s_kan
  from models.mlp import MLP, mlp_model_config

  ctx = LayerContext(d_model=8, d_ff=64)
  ffn = registry.build("ffn", "s_kan", ctx, rngs=nnx.Rngs(0), spaces=("bspline", "fourier"), select_step=2)
  assert ffn.up.kernels["bspline"].shape == (8, 9, 3) and ffn(jnp.ones((2, 5, 8))).shape == (2, 5, 8)
  cfg = mlp_model_config(hidden=(6,), layer="s_kan", n_outputs=2, in_features=3)
  cfg.options = ml_collections.ConfigDict({"s_kan": {"spaces": ("chebyshev", "rbf"), "select_step": 2}})
  model = MLP(cfg, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, size=(4, 3)), jnp.float32)
  end_step(model)
  assert bool(jnp.all(model.layers[0].mask[...]))  # still stage 1 after one step
  end_step(model)
  assert np.all(np.asarray(model.layers[0].mask[...]).sum(0) == 1)  # selected at step 2
  y = model(x)
  assert s_kan.prune(model) == 2
  np.testing.assert_allclose(model(x), y, rtol=1e-5, atol=1e-6)


def af_kan_reduced_reference(x, layer):
  """AF-KAN's parameter-reduced layer from its formulas in numpy (float64): SiLU bases, reduction, LayerNorm, SiLU,
  Linear."""
  silu = lambda u: u / (1 + np.exp(-u))  # noqa: E731
  p = {name: np.asarray(var[...], np.float64) for name, var in (
    ("start", layer.start), ("end", layer.end), ("score", layer.score), ("score_bias", layer.score_bias),
    ("kernel", layer.kernel), ("norm/scale", layer.norm.scale), ("norm/bias", layer.norm.bias))}
  if layer.temperature is not None:
    p["temperature"] = float(layer.temperature[...])
  s, e = p["start"], p["end"]
  feats = (silu(x[..., None] - s) * silu(e - x[..., None])) ** 2 * 16 / (e - s) ** 4  # [N, in, n]
  v, c = p["score"], p["score_bias"]
  if layer.reduction == "multistep":
    z = feats @ v + c
  elif layer.reduction == "global_attn":
    logits = (feats @ v + c) / max(p["temperature"], 1.0)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    z = a / a.sum(-1, keepdims=True) * feats.sum(-1)
  else:
    padded = np.pad(feats, ((0, 0), (1, 1), (0, 0)))
    scores = np.stack([sum(padded[:, i + j, :] * v[:, j] for j in range(3)) + c for i in range(x.shape[1])], 1)
    a = np.exp(scores / max(p["temperature"], 1.0))
    z = (a / a.sum(-1, keepdims=True) * feats).sum(-1)
  z = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5) * p["norm/scale"] + p["norm/bias"]
  return silu(z) @ p["kernel"]


@pytest.mark.parametrize("reduction", ["global_attn", "spatial_attn", "multistep"])
def test_af_kan_parameter_reduction(reduction):
  from layers.kan.af_kan import AFKANReducedLinear

  with jax.enable_x64(True):
    layer = AFKANReducedLinear(5, 3, reduction=reduction, grid_size=3, order=2, dtype=jnp.float64,
                               param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(6)
    for var in (layer.score, layer.score_bias, layer.norm.scale, layer.norm.bias):  # away from the init's 0s, 1s
      var[...] = jnp.asarray(rng.normal(size=var.shape))
    x = rng.uniform(-1, 1, size=(4, 5))
    np.testing.assert_allclose(layer(jnp.asarray(x)), af_kan_reduced_reference(x, layer), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer(jnp.asarray(x[:1])), layer(jnp.asarray(x))[:1], rtol=1e-12)  # per sample
    graphdef, params = nnx.split(layer)
    check_grads(lambda p, x: nnx.merge(graphdef, p)(x), (params, jnp.asarray(x)), order=1, modes=("rev",), eps=1e-6)


def test_af_kan_reduced_ffn_has_mlp_parameters():
  ctx = LayerContext(d_model=16, d_ff=64)
  ffn = registry.build("ffn", "af_kan", ctx, rngs=nnx.Rngs(0), reduction="global_attn")
  assert ffn(jnp.ones((2, 5, 16))).shape == (2, 5, 16)
  n_params = sum(p.size for p in jax.tree.leaves(nnx.state(ffn, nnx.Param)))
  assert 2 * 16 * 64 < n_params < 2 * 16 * 64 + 4 * (16 + 64)  # an MLP's weights + norms, scores, bounds
  with pytest.raises(ValueError, match="reduction"):
    registry.build("ffn", "af_kan", ctx, rngs=nnx.Rngs(0), reduction="local")
