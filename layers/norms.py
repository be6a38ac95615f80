"""RMSNorm and LayerNorm, computed in fp32 whatever the compute dtype (fp64 inputs stay fp64)."""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.core import make_param


def rms_norm(x: jax.Array, scale: jax.Array | None, eps: float = 1e-6) -> jax.Array:
  """x / rms(x) * scale over the last axis, in fp32 at least; returns x's dtype."""
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  if scale is not None:
    y = y * scale.astype(x32.dtype)
  return y.astype(x.dtype)


def layer_norm(x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, eps: float = 1e-6) -> jax.Array:
  """(x - mean) / std * scale + bias over the last axis, in fp32 at least; returns x's dtype."""
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps)
  if scale is not None:
    y = y * scale.astype(x32.dtype)
  if bias is not None:
    y = y + bias.astype(x32.dtype)
  return y.astype(x.dtype)


class RMSNorm(nnx.Module):
  def __init__(self, features: int, *, eps: float = 1e-6, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.scale = make_param(nnx.initializers.ones, rngs.params(), (features,), param_dtype, ("norm",),
                            optim_group="no_decay")
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    return rms_norm(x, self.scale[...], self.eps)


class LayerNorm(nnx.Module):
  def __init__(self, features: int, *, eps: float = 1e-6, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.scale = make_param(nnx.initializers.ones, rngs.params(), (features,), param_dtype, ("norm",),
                            optim_group="no_decay")
    self.bias = make_param(nnx.initializers.zeros, rngs.params(), (features,), param_dtype, ("norm",),
                           optim_group="no_decay")
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    return layer_norm(x, self.scale[...], self.bias[...], self.eps)


def rmsnorm(ctx: LayerContext, *, rngs: nnx.Rngs, eps: float = 1e-6) -> RMSNorm:
  return RMSNorm(ctx.features, eps=eps, param_dtype=ctx.param_dtype, rngs=rngs)


def layernorm(ctx: LayerContext, *, rngs: nnx.Rngs, eps: float = 1e-6) -> LayerNorm:
  return LayerNorm(ctx.features, eps=eps, param_dtype=ctx.param_dtype, rngs=rngs)
