"""AF-KAN: Kolmogorov-Arnold layers whose bases are built from activation functions (Ta et al., "AF-KAN:
Activation Function-Based Kolmogorov-Arnold Networks", 2025), generalising ReLU-KAN.

Per input channel i and basis c, with trainable interval bounds s_ic < e_ic,
    B_ic(x) = (f(x - s_ic) · f(e_ic - x))² · 16 / (e_ic - s_ic)⁴
(f = relu is ReLU-KAN's bell-shaped basis, peak 1 at the interval's centre; AF-KAN swaps in other
activations: silu, gelu, ...), and y = B(x) [N, in * n] @ W [in * n, out] (+ bias): one matmul over the
flattened (input, basis) axis, nothing of size [N, in, n, out]. The bounds start as ReLU-KAN's G + k
overlapping intervals of width (k + 1) / G over `grid_range`. The input is normalised per sample (LayerNorm
over the features, no learnable affine) when `normalize=True`: AF-KAN's released code normalises over the
batch instead, which makes a sample's output depend on its batch, so this code does not. The paper's
parameter-reduction variants (attention-style sharing of the basis weights) are not implemented here.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.core import make_param
from layers.kan.feedforward import KANFeedForward, _hidden

FUNCTIONS = {"relu": jax.nn.relu, "silu": jax.nn.silu, "gelu": jax.nn.gelu, "softplus": jax.nn.softplus,
             "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}


def af_kan_basis(x: jax.Array, start: jax.Array, end: jax.Array, function: str = "relu") -> jax.Array:
  """(f(x - s) f(e - x))² · 16 / (e - s)⁴: x [..., in], start / end [in, n] -> [..., in, n] (fp32 at least)."""
  f = FUNCTIONS[function]
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))[..., None]
  s, e = start.astype(x.dtype), end.astype(x.dtype)
  return jnp.square(f(x - s) * f(e - x)) * (16.0 / jnp.square(jnp.square(e - s)))


class AFKANLinear(nnx.Module):
  def __init__(self, in_features: int, out_features: int, *, grid_size: int = 5, order: int = 3,
               grid_range: tuple[float, float] = (-1.0, 1.0), function: str = "relu", normalize: bool = False,
               use_bias: bool = True, axes: tuple[str | None, str | None] = ("embed", "mlp"), dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if function not in FUNCTIONS:
      raise ValueError(f"unknown AF-KAN function {function!r}; choose from {sorted(FUNCTIONS)}")
    lo, hi = grid_range
    n = grid_size + order
    c = jnp.arange(n, dtype=jnp.float32)
    width = (hi - lo) / grid_size
    start = lo + (c - order) * width  # ReLU-KAN: s_i = (i - k - 1) / G, e_i = s_i + (k + 1) / G
    self.start = make_param(lambda k, s, d: jnp.broadcast_to(start, s).astype(d), rngs.params(),
                            (in_features, n), param_dtype, (axes[0], None))
    self.end = make_param(lambda k, s, d: jnp.broadcast_to(start + (order + 1) * width, s).astype(d),
                          rngs.params(), (in_features, n), param_dtype, (axes[0], None))
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2)
    self.kernel = make_param(init, rngs.params(), (in_features, n, out_features), param_dtype,
                             (axes[0], None, axes[1]))
    self.bias = (make_param(nnx.initializers.zeros, rngs.params(), (out_features,), param_dtype, axes[1:])
                 if use_bias else None)
    self.function, self.normalize, self.dtype = function, normalize, dtype

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., in] -> [..., out]
    if self.normalize:
      x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      x = ((x32 - x32.mean(-1, keepdims=True)) * jax.lax.rsqrt(x32.var(-1, keepdims=True) + 1e-5)).astype(x.dtype)
    basis = af_kan_basis(x, self.start[...], self.end[...], self.function).astype(self.dtype)  # [..., in, n]
    in_features, n, out_features = self.kernel.shape
    y = jnp.dot(basis.reshape(*x.shape[:-1], in_features * n),
                self.kernel[...].astype(self.dtype).reshape(in_features * n, out_features))
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class AFKANFeedForward(KANFeedForward):
  """Two AF-KAN layers D -> hidden -> D; hidden defaults to d_ff // (G + k) (MLP-equal parameters)."""

  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, hidden: int = 0, grid_size: int = 5, order: int = 3,
               grid_range: tuple[float, float] = (-1.0, 1.0), function: str = "silu", normalize: bool = True):
    h = _hidden(ctx, hidden, grid_size + order)
    kw = dict(grid_size=grid_size, order=order, grid_range=tuple(grid_range), function=function,
              normalize=normalize, dtype=ctx.dtype, param_dtype=ctx.param_dtype, rngs=rngs)
    super().__init__(AFKANLinear(ctx.d_model, h, axes=("embed", "mlp"), **kw),
                     AFKANLinear(h, ctx.d_model, axes=("mlp", "embed"), **kw))
