"""AF-KAN (activation-function bases) and FKAN (Fourier-KAN first layer): closed form, gradients, per-sample
normalisation, registry and MLP use."""

import jax
import jax.numpy as jnp
import numpy as np
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
