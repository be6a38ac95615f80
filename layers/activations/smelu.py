"""Smooth ReLU for reproducibility (Shamir & Lin, "Real World Large Scale Recommendation Systems
Reproducibility and Smooth Activations", 2022; Shamir et al., "Smooth activations and reproducibility in
deep networks", 2020).

SmeLU(x) = 0 for x <= -β, (x + β)² / (4β) for |x| <= β, x for x >= β: ReLU with its kink replaced by a
quadratic (continuous gradient, exact zeros and a slope-1 region kept). The generalised form lets the two
linear pieces have any slopes (g_- left of -α, g_+ right of β, value t at -α) joined C¹ by a quadratic on
[-α, β]; SmeLU is α = β, g_- = 0, g_+ = 1, t = 0. Fixed (no learnable parameters). β defaults to 1 here;
the papers sweep it, and the exact parameterisation of their generalised form (which of α, β, g, t are
free) could not be confirmed here, so every one is an option.
"""

import jax
from flax import nnx

from layers.activations import functional
from layers.context import LayerContext


class GeneralizedSmeLU(nnx.Module):
  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, alpha: float = 1.0, beta: float = 1.0,
               slope_left: float = 0.0, slope_right: float = 1.0, offset: float = 0.0):
    del ctx, rngs
    if alpha + beta <= 0:
      raise ValueError(f"smelu needs a transition of positive width: alpha + beta = {alpha + beta}")
    self.alpha, self.beta, self.slope_left, self.slope_right, self.offset = alpha, beta, slope_left, slope_right, offset

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., F] -> [..., F]
    return functional.generalized_smelu(x, self.alpha, self.beta, self.slope_left, self.slope_right, self.offset)


class SmeLU(GeneralizedSmeLU):
  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, beta: float = 1.0):
    super().__init__(ctx, rngs=rngs, alpha=beta, beta=beta)
