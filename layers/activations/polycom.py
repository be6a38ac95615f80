"""PolyCom activations (polynomial composition, for LLM feed-forwards): PolyNorm and PolyReLU.

Four learnable scalars per layer, w = 1/3 each and b = 0 at init, tagged optim_group="activation".
The paper places them in a non-gated FFN 3/2 as wide as the SwiGLU it replaces (equal parameters):
ffn `mlp` with hidden = 3/2 · d_ff and activation polynorm / polyrelu.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.activations import functional
from layers.context import LayerContext
from layers.core import make_param


class _PolyCom(nnx.Module):
  """weight [3] (orders 3, 2, 1) and bias [1]."""

  FLOPS_PER_FEATURE = 9  # x^2, x^3, three weighted terms and the bias

  def __init__(self, *, features: int = 0, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.features = features  # width it acts on, for FLOP accounting
    self.weight = make_param(nnx.initializers.constant(1.0 / 3.0), rngs.params(), (3,), param_dtype, (None,),
                             optim_group="activation")
    self.bias = make_param(nnx.initializers.zeros, rngs.params(), (1,), param_dtype, (None,),
                           optim_group="activation")

  def flops_per_token(self, seq_len: int) -> float:
    return float(self.features * self.FLOPS_PER_FEATURE)


class PolyNorm(_PolyCom):
  """w0 N(x³) + w1 N(x²) + w2 N(x) + b with N the RMS normalisation over the last axis."""

  FLOPS_PER_FEATURE = 18  # PolyReLU's work plus three RMS normalisations (square, sum, scale)

  def __init__(self, *, eps: float = 1e-6, features: int = 0, param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(features=features, param_dtype=param_dtype, rngs=rngs)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., F] -> [..., F]
    return functional.polynorm(x, self.weight[...], self.bias[...], self.eps)


class PolyReLU(_PolyCom):
  """w0 relu(x)³ + w1 relu(x)² + w2 relu(x) + b."""

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., F] -> [..., F]
    return functional.polyrelu(x, self.weight[...], self.bias[...])


def polynorm(ctx: LayerContext, *, rngs: nnx.Rngs, eps: float = 1e-6) -> PolyNorm:
  return PolyNorm(eps=eps, features=ctx.features, param_dtype=ctx.param_dtype, rngs=rngs)


def polyrelu(ctx: LayerContext, *, rngs: nnx.Rngs) -> PolyReLU:
  return PolyReLU(features=ctx.features, param_dtype=ctx.param_dtype, rngs=rngs)
