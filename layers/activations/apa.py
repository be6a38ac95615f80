"""Adaptive Parametric Activation and AGLU (Alexandridis et al., "Adaptive Parametric Activation", ECCV 2024).

APA(x) = (λ e^{-κx} + 1)^{-1/λ} unifies the sigmoid (λ = 1) and the Gumbel CDF (λ -> 0); AGLU(x) = x · APA(x)
is the form for hidden layers (κ = λ = 1: SiLU). κ and λ are learnable, one pair per layer by default or
one per channel (`per_channel=True`), tagged optim_group="activation". Init κ = λ = 1 (the sigmoid / SiLU
the paper starts from); the authors' released module instead draws both from U(0, 1), which this code
could not confirm against the paper's text, so `kappa` / `lam` set any start.
"""

import jax
from flax import nnx

from layers.activations import functional
from layers.context import LayerContext
from layers.core import make_param


class APA(nnx.Module):
  """(λ e^{-κx} + 1)^{-1/λ}, learnable κ, λ."""

  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, kappa: float = 1.0, lam: float = 1.0,
               per_channel: bool = False):
    shape, axes = ((ctx.features,), ("mlp",)) if per_channel else ((1,), (None,))
    self.kappa = make_param(nnx.initializers.constant(kappa), rngs.params(), shape, ctx.param_dtype, axes,
                            optim_group="activation")
    self.lam = make_param(nnx.initializers.constant(lam), rngs.params(), shape, ctx.param_dtype, axes,
                          optim_group="activation")

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., F] -> [..., F]
    return functional.apa(x, self.kappa[...], self.lam[...])


class AGLU(APA):
  """x · APA(x): the Adaptive Generalised Linear Unit."""

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., F] -> [..., F]
    return functional.aglu(x, self.kappa[...], self.lam[...])
