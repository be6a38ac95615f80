"""Small nets for classification / regression: an MLP or KAN stack, and a LeNet-like conv net.

MLP (`kind: mlp`): inputs [B, ...] flattened -> hidden layers -> [B, n_outputs]. `model.layer` picks
the hidden layer: "linear" (Linear + registered activation `model.activation`), "kan" (B-spline
KANLinear; its edge functions are the nonlinearity), "fourier_kan", "af_kan" (activation-function bases,
ReLU-KAN style; `model.options.af_kan.reduction` picks the paper's parameter-reduced layer), "s_kan" (each
node selects its activation space; `model.options.s_kan` holds SKANLinear's options, e.g. spaces and
select_step; `layers.kan.s_kan.prune(model)` is stage 3) or "fkan" (FKAN for implicit neural
representations: a Fourier-KAN first layer of `grid_size` frequencies, then Linear + `model.activation`
layers; the first layer's output also goes through the activation, a detail of the FKAN paper this code
could not confirm). `update_grid(x, grid_size)` refits (and, with a larger grid_size, extends) every KAN
layer's grid to the activations x produces.

ConvNet (`kind: convnet`): LeNet-5 shape for 1-D signals [B, L, C] or images [B, H, W, C]:
conv(6, k5) -> act -> avgpool 2 -> conv(16, k5) -> act -> avgpool 2 -> 120 -> act -> 84 -> act -> out,
with the activation any registered one (learnable ones get their own per-layer parameters).
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from layers import registry
from layers.context import LayerContext
from layers.core import Linear, make_param
from layers.kan.af_kan import AFKANLinear, AFKANReducedLinear
from layers.kan.fourier_kan import FourierKAN
from layers.kan.kan_linear import KANLinear
from layers.kan.s_kan import SKANLinear

LAYERS = ("linear", "kan", "fourier_kan", "af_kan", "s_kan", "fkan")


def mlp_model_config(hidden=(64, 64), *, layer: str = "linear", activation: str = "relu", n_outputs: int = 10,
                     grid_size: int = 5, order: int = 3, in_features: int = 0) -> ml_collections.ConfigDict:
  """`config.model` for the MLP / KAN net (in_features 0: inferred from the first input shape)."""
  return ml_collections.ConfigDict(dict(
    kind="mlp", hidden=tuple(hidden), layer=layer, activation=activation, n_outputs=n_outputs,
    in_features=in_features, grid_size=grid_size, order=order, grid_range=(-1.0, 1.0), reg_weight=0.0,
    options=ml_collections.ConfigDict(), dtype="float32", param_dtype="float32",
  ))


def convnet_model_config(*, activation: str = "relu", n_outputs: int = 10, in_channels: int = 1,
                         spatial=(40,), channels=(6, 16), dense=(120, 84), norm: str = "") -> ml_collections.ConfigDict:
  """`config.model` for the LeNet-like conv net; `spatial` is (L,) for 1-D or (H, W) for images. `norm`
  names a registered norm-activation layer (e.g. "evonorm_s0") used after each convolution in place of
  the activation."""
  return ml_collections.ConfigDict(dict(
    kind="convnet", activation=activation, norm=norm, n_outputs=n_outputs, in_channels=in_channels,
    spatial=tuple(spatial), channels=tuple(channels), dense=tuple(dense), kernel_size=5,
    options=ml_collections.ConfigDict(), dtype="float32", param_dtype="float32",
  ))


def _activation(cfg, features: int, rngs: nnx.Rngs, kind: str = "activation"):
  """The registered activation `cfg.activation` (or norm `cfg.norm`) for `features` channels."""
  name = cfg.activation if kind == "activation" else cfg.norm
  ctx = LayerContext(d_model=features, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
  return registry.build(kind, name, ctx, rngs=rngs, **dict(cfg.options.get(name, {})))


class MLP(nnx.Module):
  """inputs [B, ...] -> [B, n_outputs] (fp32)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    if cfg.layer not in LAYERS:
      raise ValueError(f"model.layer must be one of {LAYERS}, got {cfg.layer!r}")
    if not cfg.in_features:
      raise ValueError("model.in_features must be set (the flattened input size)")
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    widths = [cfg.in_features, *cfg.hidden, cfg.n_outputs]
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    layers, acts = [], []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
      axes = ("embed" if i else None, "mlp" if i < len(widths) - 2 else None)
      if cfg.layer == "kan":
        layers.append(KANLinear(a, b, grid_size=cfg.grid_size, order=cfg.order, reg_weight=cfg.reg_weight,
                                grid_range=tuple(cfg.grid_range), axes=axes, **kw))
      elif cfg.layer == "fourier_kan" or (cfg.layer == "fkan" and i == 0):
        layers.append(FourierKAN(a, b, grid_size=cfg.grid_size, axes=axes, **kw))
        if cfg.layer == "fkan":
          acts.append(_activation(cfg, b, rngs))
      elif cfg.layer == "af_kan":
        opts = dict(cfg.options.get("af_kan", {}))
        reduction = opts.pop("reduction", "none")
        layer = AFKANLinear if reduction == "none" else functools.partial(AFKANReducedLinear, reduction=reduction)
        layers.append(layer(a, b, grid_size=cfg.grid_size, order=cfg.order, grid_range=tuple(cfg.grid_range),
                            axes=axes, **opts, **kw))
      elif cfg.layer == "s_kan":
        layers.append(SKANLinear(a, b, grid_size=cfg.grid_size, order=cfg.order, grid_range=tuple(cfg.grid_range),
                                 axes=axes, **dict(cfg.options.get("s_kan", {})), **kw))
      else:
        layers.append(Linear(a, b, axes=axes, use_bias=True, **kw))
        if i < len(widths) - 2:
          acts.append(_activation(cfg, b, rngs))
        # A SIREN sine brings the init of the Linear feeding it (first layer / hidden layers; the output
        # layer follows a sine too and takes the hidden-layer init).
        feeds = acts[-1] if acts else None
        if hasattr(feeds, "kernel_init"):
          kernel = layers[-1].kernel
          kernel[...] = feeds.kernel_init(first_layer=i == 0)(rngs.params(), kernel.shape, kernel.dtype)
    self.layers = nnx.List(layers)
    self.acts = nnx.List(acts)

  def __call__(self, inputs: jax.Array) -> jax.Array:  # [B, ...] -> [B, n_outputs]
    x = inputs.reshape(inputs.shape[0], -1)
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.acts):
        x = self.acts[i](x)
    return x.astype(jnp.float32)

  def update_grid(self, inputs: jax.Array, grid_size: int | None = None) -> None:
    """Refit every KAN layer's grid to the data (grid_size > current: grid extension), layer by layer."""
    x = inputs.reshape(inputs.shape[0], -1)
    for layer in self.layers:
      if isinstance(layer, KANLinear):
        if grid_size is None:
          layer.update_grid(x)
        else:
          layer.extend_grid(x, grid_size)
      x = layer(x)


class Conv(nnx.Module):
  """'SAME'-padded N-d convolution, channels-last; kernel [*k, C_in, C_out]."""

  def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...], *, dtype, param_dtype,
               rngs: nnx.Rngs):
    shape = (*kernel, in_channels, out_channels)
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    self.kernel = make_param(init, rngs.params(), shape, param_dtype, (None,) * len(shape))
    self.bias = make_param(nnx.initializers.zeros, rngs.params(), (out_channels,), param_dtype, (None,))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:  # [B, *spatial, C_in] -> [B, *spatial, C_out]
    nd = x.ndim - 2
    spec = "N" + "HWD"[:nd] + "C"
    dn = (spec, "HWD"[:nd] + "IO", spec)
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), self.kernel[...].astype(self.dtype), (1,) * nd,
                                     "SAME", dimension_numbers=dn)
    return y + self.bias[...].astype(self.dtype)


def _avg_pool(x: jax.Array) -> jax.Array:
  """2x average pooling over every spatial dim (floor)."""
  B, *spatial, C = x.shape
  out = [s // 2 for s in spatial]
  x = x[(slice(None), *[slice(0, 2 * o) for o in out], slice(None))]
  x = x.reshape(B, *[d for o in out for d in (o, 2)], C)
  return x.mean(axis=tuple(range(2, 2 * len(out) + 1, 2)))


class ConvNet(nnx.Module):
  """inputs [B, *spatial, C] -> [B, n_outputs] (fp32)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    kernel = (cfg.kernel_size,) * len(cfg.spatial)
    chans = [cfg.in_channels, *cfg.channels]
    self.convs = nnx.List([Conv(a, b, kernel, **kw) for a, b in itertools.pairwise(chans)])
    kind = "norm" if cfg.get("norm") else "activation"  # a norm-activation layer (EvoNorm) or an activation
    self.conv_acts = nnx.List([_activation(cfg, c, rngs, kind) for c in cfg.channels])
    flat = math.prod(s // 2 ** len(cfg.channels) for s in cfg.spatial) * chans[-1]
    widths = [flat, *cfg.dense]
    self.dense = nnx.List([Linear(a, b, axes=(None, None), use_bias=True, **kw)
                           for a, b in itertools.pairwise(widths)])
    self.dense_acts = nnx.List([_activation(cfg, w, rngs) for w in cfg.dense])
    self.head = Linear(widths[-1], cfg.n_outputs, axes=(None, None), use_bias=True, **kw)

  def __call__(self, inputs: jax.Array) -> jax.Array:  # [B, *spatial, C] -> [B, n_outputs]
    x = inputs
    for conv, act in zip(self.convs, self.conv_acts):
      x = _avg_pool(act(conv(x)))
    x = x.reshape(x.shape[0], -1)
    for dense, act in zip(self.dense, self.dense_acts):
      x = act(dense(x))
    return self.head(x).astype(jnp.float32)
