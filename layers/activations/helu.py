"""HeLU, the hysteresis ReLU (Kimhi et al., "Hysteresis Activation Function for Efficient Inference",
ENLSP @ NeurIPS 2024): relu(x) forward, but the backward passes the gradient for x > -alpha instead of
x > 0 (a custom gradient), so units just below zero are not dead. alpha = 0.05 as in the authors' code.
Inference is a plain ReLU."""

import jax
from flax import nnx

from layers.activations import functional
from layers.context import LayerContext


class HeLU(nnx.Module):
  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, alpha: float = 0.05):
    del ctx, rngs
    if alpha < 0:
      raise ValueError(f"helu alpha is the backward threshold's distance below 0; got {alpha} < 0")
    self.alpha = alpha

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., F] -> [..., F]
    return functional.helu(x, self.alpha)
