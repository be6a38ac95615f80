"""EvoNorm-B0 and EvoNorm-S0 (Liu et al., "Evolving Normalization-Activation Layers", NeurIPS 2020).

Norm-activation layers found by search, replacing BatchNorm/GroupNorm + ReLU. For x [B, *spatial, C]
(channels last; a ViT's tokens count as spatial), per channel c with learnable v, γ = 1, β = 0 at init:
  B0:  y = x / max(sqrt(s²_{b,w,h}(x) + ε), v·x + sqrt(s²_{w,h}(x) + ε)) · γ + β
       s²_{b,w,h}: batch variance over (batch, spatial), a running average of it at evaluation
       (`deterministic=True`, as BatchNorm; momentum 0.9); s²_{w,h}: each sample's variance over spatial.
  S0:  y = x · σ(v·x) / sqrt(s²_{w,h,c/g}(x) + ε) · γ + β
       s²_{w,h,c/g}: each sample's variance over spatial and the channels of its group (g = 32 groups).
ε = 1e-5. Statistics in fp32 whatever the compute dtype. Registered as norms ("evonorm_b0", "evonorm_s0"):
use them as the ViT's `model.norm` or as the conv net's `model.norm` (after each convolution, in place of
its activation). B0 needs spatial or token axes (an instance variance over nothing is undefined).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.core import make_param


class _EvoNorm(nnx.Module):
  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, eps: float = 1e-5):
    f = ctx.features
    kw = dict(optim_group="no_decay")
    self.v = make_param(nnx.initializers.ones, rngs.params(), (f,), ctx.param_dtype, ("norm",), **kw)
    self.scale = make_param(nnx.initializers.ones, rngs.params(), (f,), ctx.param_dtype, ("norm",), **kw)
    self.bias = make_param(nnx.initializers.zeros, rngs.params(), (f,), ctx.param_dtype, ("norm",), **kw)
    self.eps = eps

  def _affine(self, y: jax.Array, x: jax.Array) -> jax.Array:
    return (y * self.scale[...].astype(y.dtype) + self.bias[...].astype(y.dtype)).astype(x.dtype)


class EvoNormB0(_EvoNorm):
  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, eps: float = 1e-5, momentum: float = 0.9):
    super().__init__(ctx, rngs=rngs, eps=eps)
    self.running_var = nnx.BatchStat(jnp.ones((ctx.features,), jnp.float32))
    self.momentum = momentum
    self.deterministic = False

  def set_view(self, deterministic: bool | None = None):
    """`nnx.view(model, deterministic=True)` evaluates with the running batch variance (like BatchNorm)."""
    if deterministic is not None:
      self.deterministic = deterministic

  def __call__(self, x: jax.Array) -> jax.Array:  # [B, *spatial, C] -> same
    if x.ndim < 3:
      raise ValueError(f"evonorm_b0 needs spatial or token axes ([B, *spatial, C]); got shape {x.shape}; "
                       "use evonorm_s0 or a plain norm for [B, C] inputs")
    x32 = x.astype(jnp.float32)
    if self.deterministic:
      batch_var = self.running_var[...]
    else:
      batch_var = jnp.var(x32, axis=tuple(range(x.ndim - 1)))
      self.running_var[...] = self.momentum * self.running_var[...] + (1 - self.momentum) * batch_var
    instance_std = jnp.sqrt(jnp.var(x32, axis=tuple(range(1, x.ndim - 1)), keepdims=True) + self.eps)
    den = jnp.maximum(jnp.sqrt(batch_var + self.eps), self.v[...].astype(jnp.float32) * x32 + instance_std)
    return self._affine(x32 / den, x)


class EvoNormS0(_EvoNorm):
  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, eps: float = 1e-5, groups: int = 32):
    super().__init__(ctx, rngs=rngs, eps=eps)
    if groups < 1 or ctx.features % groups:
      raise ValueError(f"evonorm_s0: {ctx.features} channels cannot be split into groups={groups}; "
                       f"set model.options.<norm>.groups to a divisor of {ctx.features}")
    self.groups = groups

  def __call__(self, x: jax.Array) -> jax.Array:  # [B, *spatial, C] -> same
    x32 = x.astype(jnp.float32)
    g = x32.reshape(*x.shape[:-1], self.groups, x.shape[-1] // self.groups)  # [B, *spatial, G, C/G]
    axes = (*range(1, x.ndim - 1), x.ndim)  # spatial and the channels of a group
    std = jnp.sqrt(jnp.var(g, axis=axes, keepdims=True) + self.eps)
    y = (g * jax.nn.sigmoid(self.v[...].astype(jnp.float32).reshape(self.groups, -1) * g) / std).reshape(x.shape)
    return self._affine(y, x)
