"""FourierKAN: a Kolmogorov-Arnold layer whose edge functions are truncated Fourier series.

y_o = sum_i sum_{m=1..G} C0[i,m,o] cos(m x_i) + C1[i,m,o] sin(m x_i) + bias_o (`functional.fourier_kan`).
Init: C ~ N(0, 1) / (sqrt(in) sqrt(G)); the "smooth" init divides frequency m by m^2 instead of
sqrt(G), so high frequencies start small.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.core import make_param
from layers.kan import functional


def fourier_kan_init(smooth: bool):
  """Initializer for coeffs [2, in, G, out]."""

  def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    _, in_features, grid_size, _ = shape
    m = jnp.arange(1, grid_size + 1, dtype=jnp.float32)[:, None]  # [G, 1]
    norm = m**2 if smooth else jnp.sqrt(jnp.float32(grid_size))
    scale = jnp.sqrt(jnp.float32(in_features)) * norm
    return (jax.random.normal(key, shape, jnp.float32) / scale).astype(dtype)

  return init


class FourierKAN(nnx.Module):
  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    grid_size: int = 5,
    smooth_init: bool = False,
    use_bias: bool = True,
    axes: tuple[str | None, str | None] = ("embed", "mlp"),
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.coeffs = make_param(fourier_kan_init(smooth_init), rngs.params(),
                             (2, in_features, grid_size, out_features), param_dtype,
                             (None, axes[0], None, axes[1]))
    self.bias = (make_param(nnx.initializers.zeros, rngs.params(), (out_features,), param_dtype, axes[1:])
                 if use_bias else None)
    self.dtype = dtype

  def extra_flops_per_token(self, seq_len: int) -> float:
    """cos and sin of m x for m = 1..G per input (one FLOP each); the contraction is the coeffs."""
    _, n_in, grid, _ = self.coeffs.shape
    return float(2 * n_in * grid)

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., in] -> [..., out]
    bias = None if self.bias is None else self.bias[...]
    return functional.fourier_kan(x.astype(self.dtype), self.coeffs[...], bias)
