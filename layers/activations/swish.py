"""Swish x · σ(βx) with a learnable β (Ramachandran et al.), one per layer or one per channel."""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.activations import functional
from layers.context import LayerContext
from layers.core import make_param


class SwishBeta(nnx.Module):
  """β starts at `beta` (1 = SiLU); tagged optim_group="activation"."""

  def __init__(self, features: int, *, beta: float = 1.0, per_channel: bool = False, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    shape, axes = ((features,), ("mlp",)) if per_channel else ((1,), (None,))
    self.beta = make_param(nnx.initializers.constant(beta), rngs.params(), shape, param_dtype, axes,
                           optim_group="activation")

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., F] -> [..., F]
    return functional.swish(x, self.beta[...])


def swish_beta(ctx: LayerContext, *, rngs: nnx.Rngs, beta: float = 1.0,
               per_channel: bool = False) -> SwishBeta:
  return SwishBeta(ctx.features, beta=beta, per_channel=per_channel, param_dtype=ctx.param_dtype, rngs=rngs)
