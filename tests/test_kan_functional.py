"""KAN functional cores: golden vectors, gradients, memory footprint, grid refit keeps the function."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from layers.kan import functional as F

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "activations.npz")


def rel_rmse(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


def _kan_outputs(dtype):
  g = {k: jnp.asarray(GOLDEN[f"kan/{k}"], dtype) for k in ("x", "grid", "base_kernel", "spline_kernel")}
  order = int(GOLDEN["kan/order"])
  basis = F.b_spline_basis(g["x"], g["grid"], order)
  y = F.kan_linear(g["x"], g["base_kernel"], g["spline_kernel"], g["grid"], order)
  c = GOLDEN["fourier_kan/coeffs"]
  fy = F.fourier_kan(jnp.asarray(GOLDEN["fourier_kan/x"], dtype), jnp.asarray(c, dtype),
                     jnp.asarray(GOLDEN["fourier_kan/bias"], dtype))
  return basis, y, fy


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_golden(dtype, tol):
  with jax.enable_x64(dtype == "float64"):
    basis, y, fy = _kan_outputs(jnp.dtype(dtype))
    assert y.dtype == jnp.dtype(dtype) and fy.dtype == jnp.dtype(dtype)
    assert rel_rmse(basis, GOLDEN["kan/basis"]) < tol
    assert rel_rmse(y, GOLDEN["kan/y"]) < tol
    assert rel_rmse(fy, GOLDEN["fourier_kan/y"]) < tol


def test_uniform_grid_matches_golden():
  grid = F.uniform_grid(6, 5, 3)
  np.testing.assert_allclose(grid, GOLDEN["kan/grid"], atol=1e-6)


def test_basis_partition_of_unity():
  """Inside the un-extended grid the G + k bases sum to one (a property, not a stored number)."""
  x = jnp.linspace(-0.99, 0.99, 41)[:, None]
  basis = F.b_spline_basis(x, F.uniform_grid(1, 5, 3), 3)
  np.testing.assert_allclose(basis.sum(-1), 1.0, atol=1e-5)


def test_gradients():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-0.9, 0.9, (5, 3)))
    grid = F.uniform_grid(3, 4, 3, dtype=jnp.float64)
    base, spline = jnp.asarray(rng.normal(size=(3, 2))), jnp.asarray(rng.normal(size=(3, 7, 2)))
    check_grads(lambda x, b, s: F.kan_linear(x, b, s, grid, 3), (x, base, spline), order=1, modes=("rev",))
    coeffs, bias = jnp.asarray(rng.normal(size=(2, 3, 4, 2))), jnp.asarray(rng.normal(size=(2,)))
    check_grads(F.fourier_kan, (x, coeffs, bias), order=1, modes=("rev",))


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_features_and_slopes_match_cox_de_boor(order):
  """Cardinal uniform bases == Cox-de Boor (inside, outside, on knots), and both paths' analytic
  derivatives == autodiff of Cox-de Boor; a data grid takes the general path."""
  with jax.enable_x64(True):
    G = 4
    grid = F.uniform_grid(3, G, order, (-1.0, 1.5), dtype=jnp.float64)
    knots = np.asarray(grid[0])
    x = np.concatenate([np.linspace(-3, 3, 97), knots, knots[1:-1] + 1e-9, [knots[0] - 0.5, knots[-1] + 0.1]])
    x = jnp.asarray(np.stack([x, x * 0.7, -x], axis=1))  # [n, 3]
    data = F.data_grid(jnp.tanh(jax.random.normal(jax.random.key(0), (256, 3), jnp.float64)), G, order)
    assert bool(F.is_uniform(grid)) and not bool(F.is_uniform(data))
    for g, path in ((grid, F._uniform_bases), (data, F._general_bases)):
      cdb = jnp.swapaxes(F.b_spline_basis(x, g, order), -1, -2)  # [n, G+k, in]
      np.testing.assert_allclose(path(x, g, order, False), cdb, atol=1e-12)
      feats, slopes = F.kan_features(x, g, order), F.kan_features(x, g, order, derivative=True)
      np.testing.assert_allclose(feats[:, 0], jax.nn.silu(x), rtol=1e-12)
      np.testing.assert_allclose(feats[:, 1:], cdb, atol=1e-12)
      np.testing.assert_allclose(slopes[:, 0], jax.vmap(jax.vmap(jax.grad(jax.nn.silu)))(x), rtol=1e-12)
      inside = np.all(np.abs(np.asarray(x)[:, :, None] - np.asarray(g)[None]) > 1e-6, axis=(1, 2))  # off knots
      auto = jax.vmap(jax.jacfwd(lambda xi, g=g: F.b_spline_basis(xi[None], g, order)[0]))(x[inside])
      expected = jnp.einsum("nicI->nci", auto * jnp.eye(3)[None, :, None, :])  # [n, G+k, in]
      np.testing.assert_allclose(slopes[inside, 1:], expected, atol=1e-9)


def test_gradients_on_a_data_grid():
  """The hand-written backward on a non-uniform (data-fitted) grid against finite differences."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-0.9, 0.9, (6, 3)))
    grid = F.data_grid(jnp.asarray(rng.normal(size=(64, 3))) * 0.5, 4, 3)
    base, spline = jnp.asarray(rng.normal(size=(3, 2))), jnp.asarray(rng.normal(size=(3, 7, 2)))
    check_grads(lambda x, b, s: F.kan_linear(x, b, s, grid, 3), (x, base, spline), order=1, modes=("rev",))


def _largest_intermediate(fn, *args) -> int:
  """Elements of the largest array any equation of fn's jaxpr (forward + backward) produces."""
  def sizes(jaxpr):
    for eqn in jaxpr.eqns:
      for v in eqn.outvars:
        yield int(np.prod(v.aval.shape))
      for sub in jax.core.jaxprs_in_params(eqn.params):
        yield from sizes(sub)
  return max(sizes(jax.make_jaxpr(fn)(*args).jaxpr))


def test_memory_no_edge_tensor():
  N, I, O, G, k = 256, 16, 24, 5, 3
  x = jnp.zeros((N, I))
  grid = F.uniform_grid(I, G, k)

  def grad(fn):
    return jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=(0, 1, 2))

  def spline_fn(x, b, s):
    return F.kan_linear(x, b, s, grid, k)

  biggest = _largest_intermediate(grad(spline_fn), x, jnp.zeros((I, O)), jnp.zeros((I, G + k, O)))
  assert biggest <= N * I * (G + 2 * k) < N * I * (G + k) * O  # both paths: Cox-de Boor's order-0 indicators
  uniform = _largest_intermediate(lambda x: F._uniform_bases(x, grid, k, True), x)  # the uniform path
  assert uniform <= N * I * (G + k)
  biggest = _largest_intermediate(grad(F.fourier_kan), x, jnp.zeros((2, I, G, O)), jnp.zeros((O,)))
  assert biggest <= N * 2 * I * G < N * I * G * O


def _random_spline(key, I, O, G, k):
  return jax.random.normal(key, (I, G + k, O)) / np.sqrt(I)


def test_grid_update_keeps_function():
  """Quantile grid fitted to data: the refit spline reproduces the old (smooth) one on that data."""
  I, O, G, k = 3, 4, 5, 3
  x = jnp.tanh(jax.random.normal(jax.random.key(0), (512, I)))  # inside [-1, 1], denser near 0
  grid = F.uniform_grid(I, G, k)
  smooth = jnp.sin(2 * x)[..., None] * jnp.arange(1, O + 1)  # [N, I, O] edge functions
  spline = F.fit_spline_kernel(x, jnp.swapaxes(smooth, 0, 1), grid, k)
  new_grid, new_spline = F.refit_grid(x, grid, spline, k)
  assert not np.allclose(new_grid, grid)
  base = jnp.zeros((I, O))
  before = F.kan_linear(x, base, spline, grid, k)
  after = F.kan_linear(x, base, new_spline, new_grid, k)
  assert rel_rmse(after, before) < 2e-3


def test_grid_extension_is_exact_on_refined_uniform_grid():
  """Coarse -> fine on a uniform grid over the same range: a cubic spline is exactly representable."""
  I, O, G, k = 2, 3, 4, 3
  x = jnp.linspace(-1.0, 1.0, 200)[:, None] * jnp.ones((1, I))
  grid, spline = F.data_grid(x, G, k, grid_eps=1.0, margin=0.0), _random_spline(jax.random.key(1), I, O, G, k)
  new_grid, new_spline = F.refit_grid(x, grid, spline, k, grid_size=2 * G, grid_eps=1.0, margin=0.0)
  assert new_spline.shape == (I, 2 * G + k, O) and new_grid.shape == (I, 2 * G + 2 * k + 1)
  base = jnp.zeros((I, O))
  xt = x[:-1]  # half-open intervals: the last knot itself is outside
  after = F.kan_linear(xt, base, new_spline, new_grid, k)
  assert rel_rmse(after, F.kan_linear(xt, base, spline, grid, k)) < 1e-4


def test_regularizer():
  edge = jnp.array([[1.0, 1.0], [1.0, 1.0]])
  np.testing.assert_allclose(F.kan_regularizer(edge, l1_weight=1.0, entropy_weight=0.0), 4.0)
  entropy = F.kan_regularizer(edge, l1_weight=0.0, entropy_weight=1.0)
  np.testing.assert_allclose(entropy, np.log(4.0), rtol=1e-6)
  sparse = jnp.array([[4.0, 0.0], [0.0, 0.0]])
  assert F.kan_regularizer(sparse, l1_weight=0.0) < 1e-6
  x = jax.random.normal(jax.random.key(2), (64, 3))
  grid = F.uniform_grid(3, 5, 3)
  base, spline = jax.random.normal(jax.random.key(3), (3, 2)), _random_spline(jax.random.key(4), 3, 2, 5, 3)
  basis = F.b_spline_basis(x, grid, 3)
  phi = jax.nn.silu(x)[:, :, None] * base + jnp.einsum("nic,ico->nio", basis, spline)
  np.testing.assert_allclose(F.kan_edge_activations_mean_abs(x, base, spline, grid, 3),
                             jnp.abs(phi).mean(0), rtol=1e-5)
