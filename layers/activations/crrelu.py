"""CRReLU, the correction-regularised ReLU of EAFO ("Entropy-based Activation Function Optimization").

relu(x) + ε x exp(-x² / 2): ReLU plus a learnable Gaussian-windowed linear correction that EAFO derives as the
first-order step of its entropy-based activation search. ε starts at 0.01 (the authors' code), one per layer
(or per channel), tagged optim_group="activation".
"""

import jax
from flax import nnx

from layers.activations import functional
from layers.context import LayerContext
from layers.core import make_param


class CRReLU(nnx.Module):
  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, eps: float = 0.01, per_channel: bool = False):
    shape, axes = ((ctx.features,), ("mlp",)) if per_channel else ((1,), (None,))
    self.eps = make_param(nnx.initializers.constant(eps), rngs.params(), shape, ctx.param_dtype, axes,
                          optim_group="activation")

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., F] -> [..., F]
    return functional.crrelu(x, self.eps[...])
