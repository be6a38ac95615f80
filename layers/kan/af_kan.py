"""AF-KAN: Kolmogorov-Arnold layers whose bases are built from activation functions (Ta et al., "AF-KAN:
Activation Function-Based Kolmogorov-Arnold Networks", 2025), generalising ReLU-KAN.

Per input channel i and basis c, with trainable interval bounds s_ic < e_ic,
    B_ic(x) = (f(x - s_ic) · f(e_ic - x))² · 16 / (e_ic - s_ic)⁴
(f = relu is ReLU-KAN's bell-shaped basis, peak 1 at the interval's centre; AF-KAN swaps in other
activations: silu, gelu, ...), and y = B(x) [N, in * n] @ W [in * n, out] (+ bias): one matmul over the
flattened (input, basis) axis, nothing of size [N, in, n, out]. The bounds start as ReLU-KAN's G + k
overlapping intervals of width (k + 1) / G over `grid_range`. The input is normalised per sample (LayerNorm
over the features, no learnable affine) when `normalize=True`: AF-KAN's released code normalises over the
batch instead, which makes a sample's output depend on its batch, so this code does not.

Parameter reduction (`AFKANReducedLinear`, the layer the paper trains; its released code, models/af_kan.py of
github.com/hoangthangta/All-KAN at 8ed977f, defines it): the n bases of each input are reduced to one value
z_i [N, in], then z -> LayerNorm (learnable affine) -> f -> Linear W [in, out] (no bias), so a layer has an
MLP's in * out weights plus O(in + n) more. The reductions, F = B(x) [N, in, n], v [n], c, T = temperature
(learnable, init sqrt(in), floored at 1):
  global_attn (the paper's default):  z_i = a_i Σ_c F_ic,  a = softmax over the inputs i of (F_i · v + c) / T;
  spatial_attn:  z_i = Σ_c a_ci F_ic,  a_:i = softmax over the bases c of a depthwise convolution (kernel 3,
                 one filter per basis) along the input axis of F, divided by T;
  multistep:     z_i = F_i · v + c.
Its bounds are shared by all inputs (one [n] pair, as in that code). Its per-batch min-max normalisation of
the bases is replaced by the fixed 16 / (e - s)⁴ factor above (again: no dependence on the batch).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.core import make_param
from layers.kan.feedforward import KANFeedForward, _hidden
from layers.norms import LayerNorm, layer_norm

FUNCTIONS = {"relu": jax.nn.relu, "silu": jax.nn.silu, "gelu": jax.nn.gelu, "softplus": jax.nn.softplus,
             "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}


REDUCTIONS = ("global_attn", "spatial_attn", "multistep")


def af_kan_basis(x: jax.Array, start: jax.Array, end: jax.Array, function: str = "relu") -> jax.Array:
  """(f(x - s) f(e - x))² · 16 / (e - s)⁴: x [..., in], start / end [in, n] or [n] -> [..., in, n] (fp32 at
  least)."""
  f = FUNCTIONS[function]
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))[..., None]
  s, e = start.astype(x.dtype), end.astype(x.dtype)
  return jnp.square(f(x - s) * f(e - x)) * (16.0 / jnp.square(jnp.square(e - s)))


def _bounds(lead: tuple, lead_axes: tuple, grid_size: int, order: int, grid_range, function: str, param_dtype,
            rngs: nnx.Rngs) -> tuple[nnx.Param, nnx.Param]:
  """The trainable interval bounds (start, end) [*lead, G + k]: ReLU-KAN's G + k overlapping intervals."""
  if function not in FUNCTIONS:
    raise ValueError(f"unknown AF-KAN function {function!r}; choose from {sorted(FUNCTIONS)}")
  lo, hi = grid_range
  n = grid_size + order
  width = (hi - lo) / grid_size
  start = lo + (jnp.arange(n, dtype=jnp.float32) - order) * width  # ReLU-KAN: s_i = (i - k - 1) / G
  end = start + (order + 1) * width  # e_i = s_i + (k + 1) / G

  def make(value):
    return make_param(lambda k, s, d: jnp.broadcast_to(value, s).astype(d), rngs.params(), (*lead, n), param_dtype,
                      (*lead_axes, None))

  return make(start), make(end)


class AFKANLinear(nnx.Module):
  def __init__(self, in_features: int, out_features: int, *, grid_size: int = 5, order: int = 3,
               grid_range: tuple[float, float] = (-1.0, 1.0), function: str = "relu", normalize: bool = False,
               use_bias: bool = True, axes: tuple[str | None, str | None] = ("embed", "mlp"), dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.start, self.end = _bounds((in_features,), (axes[0],), grid_size, order, grid_range, function, param_dtype,
                                   rngs)
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2)
    self.kernel = make_param(init, rngs.params(), (in_features, grid_size + order, out_features), param_dtype,
                             (axes[0], None, axes[1]))
    self.bias = (make_param(nnx.initializers.zeros, rngs.params(), (out_features,), param_dtype, axes[1:])
                 if use_bias else None)
    self.function, self.normalize, self.dtype = function, normalize, dtype

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., in] -> [..., out]
    if self.normalize:
      x = layer_norm(x, None, None, 1e-5)
    basis = af_kan_basis(x, self.start[...], self.end[...], self.function).astype(self.dtype)  # [..., in, n]
    in_features, n, out_features = self.kernel.shape
    y = jnp.dot(basis.reshape(*x.shape[:-1], in_features * n),
                self.kernel[...].astype(self.dtype).reshape(in_features * n, out_features))
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class AFKANReducedLinear(nnx.Module):
  """AF-KAN with the paper's parameter reduction (module docstring): bases -> one value per input -> LayerNorm
  -> f -> Linear."""

  def __init__(self, in_features: int, out_features: int, *, reduction: str = "global_attn", grid_size: int = 5,
               order: int = 3, grid_range: tuple[float, float] = (-1.0, 1.0), function: str = "silu",
               axes: tuple[str | None, str | None] = ("embed", "mlp"), dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if reduction not in REDUCTIONS:
      raise ValueError(f"unknown AF-KAN reduction {reduction!r}; choose from {REDUCTIONS}")
    n = grid_size + order
    self.start, self.end = _bounds((), (), grid_size, order, grid_range, function, param_dtype, rngs)
    if reduction == "spatial_attn":  # depthwise conv along the inputs, one kernel-3 filter per basis
      self.score = make_param(nnx.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=1, out_axis=0),
                              rngs.params(), (n, 3), param_dtype, (None, None))
      self.score_bias = make_param(nnx.initializers.zeros, rngs.params(), (n,), param_dtype, (None,))
    else:  # a linear map of the n bases to one score / value
      self.score = make_param(nnx.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=0, out_axis=()),
                              rngs.params(), (n,), param_dtype, (None,))
      self.score_bias = make_param(nnx.initializers.zeros, rngs.params(), (), param_dtype, ())
    self.temperature = (None if reduction == "multistep" else
                        make_param(nnx.initializers.constant(in_features ** 0.5), rngs.params(), (), param_dtype, ()))
    self.norm = LayerNorm(in_features, eps=1e-5, param_dtype=param_dtype, rngs=rngs)
    self.kernel = make_param(nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"), rngs.params(),
                             (in_features, out_features), param_dtype, axes)
    self.reduction, self.function, self.dtype = reduction, function, dtype

  def reduce(self, feats: jax.Array) -> jax.Array:
    """F [..., in, n] -> z [..., in] (fp32)."""
    v, c = self.score[...].astype(feats.dtype), self.score_bias[...].astype(feats.dtype)
    if self.reduction == "multistep":
      return feats @ v + c
    t = jnp.maximum(self.temperature[...].astype(feats.dtype), 1.0)
    if self.reduction == "global_attn":
      a = jax.nn.softmax((feats @ v + c) / t, axis=-1)  # over the inputs
      return a * jnp.sum(feats, axis=-1)
    padded = jnp.pad(feats, [(0, 0)] * (feats.ndim - 2) + [(1, 1), (0, 0)])  # zero-padded along the inputs
    n_in = feats.shape[-2]
    scores = sum(padded[..., j:j + n_in, :] * v[:, j] for j in range(3)) + c  # [..., in, n]
    return jnp.sum(jax.nn.softmax(scores / t, axis=-1) * feats, axis=-1)  # softmax over the bases

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., in] -> [..., out]
    feats = af_kan_basis(x, self.start[...], self.end[...], self.function)  # [..., in, n]
    z = self.norm(self.reduce(feats))
    h = FUNCTIONS[self.function](z).astype(self.dtype)
    return jnp.dot(h, self.kernel[...].astype(self.dtype))


class AFKANFeedForward(KANFeedForward):
  """Two AF-KAN layers D -> hidden -> D. reduction "none": full AF-KAN layers, hidden defaults to d_ff // (G + k);
  otherwise the paper's parameter-reduced layers, hidden defaults to d_ff (MLP-equal parameters either way)."""

  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, hidden: int = 0, grid_size: int = 5, order: int = 3,
               grid_range: tuple[float, float] = (-1.0, 1.0), function: str = "silu", normalize: bool = True,
               reduction: str = "none"):
    kw = dict(grid_size=grid_size, order=order, grid_range=tuple(grid_range), function=function,
              dtype=ctx.dtype, param_dtype=ctx.param_dtype, rngs=rngs)
    if reduction == "none":
      layer, h = functools.partial(AFKANLinear, normalize=normalize, **kw), _hidden(ctx, hidden, grid_size + order)
    else:
      layer, h = functools.partial(AFKANReducedLinear, reduction=reduction, **kw), _hidden(ctx, hidden, 1)
    super().__init__(layer(ctx.d_model, h, axes=("embed", "mlp")), layer(h, ctx.d_model, axes=("mlp", "embed")))
