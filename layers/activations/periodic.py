"""Periodic activations: Snake (periodic extrapolation) and SIREN's sine (implicit neural representations).

Snake (Ziyin et al., "Neural Networks Fail to Learn Periodic Functions and How to Fix It", NeurIPS 2020):
x + sin²(a x) / a, monotone for any a > 0, so it keeps ReLU-like optimisation while extrapolating
periodically; a is learnable, one per channel by default (`learnable=False` fixes it; the paper uses
a in [5, 50] for clearly periodic data and a learnable a elsewhere; the init here is `a`, default 1).

Sine (Sitzmann et al., "Implicit Neural Representations with Periodic Activation Functions", NeurIPS 2020):
sin(ω₀ x), ω₀ = 30. Its initialisation belongs to the Linear layer before it: the first layer draws
W ~ U(-1/n, 1/n), hidden layers W ~ U(-√(6/n)/ω₀, √(6/n)/ω₀) (n = fan-in), so ω₀ W x stays ~ arcsine-
distributed through depth; `Sine.kernel_init(first_layer)` returns that initialiser and the MLP model uses
it for the Linear that feeds a Sine.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from layers.activations import functional
from layers.context import LayerContext
from layers.core import make_param


class Snake(nnx.Module):
  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, a: float = 1.0, per_channel: bool = True,
               learnable: bool = True):
    if a <= 0:
      raise ValueError(f"snake needs a > 0 (it divides by a); got a = {a}")
    shape, axes = ((ctx.features,), ("mlp",)) if per_channel else ((1,), (None,))
    self.a = (make_param(nnx.initializers.constant(a), rngs.params(), shape, ctx.param_dtype, axes,
                         optim_group="activation") if learnable else a)

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., F] -> [..., F]
    return functional.snake(x, self.a[...] if isinstance(self.a, nnx.Param) else jnp.asarray(self.a))


class Sine(nnx.Module):
  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, omega: float = 30.0):
    del ctx, rngs
    self.omega = omega

  def kernel_init(self, first_layer: bool):
    """SIREN's initialiser for the [fan_in, fan_out] kernel of the Linear feeding this sine."""
    def init(key, shape, dtype=jnp.float32):
      bound = 1.0 / shape[0] if first_layer else math.sqrt(6.0 / shape[0]) / self.omega
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., F] -> [..., F]
    return jnp.sin(self.omega * x.astype(jnp.promote_types(x.dtype, jnp.float32))).astype(x.dtype)
