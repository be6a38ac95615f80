"""GR-KAN feed-forward (Kolmogorov-Arnold Transformer, KAT): GR(identity) -> Linear -> GR(swish) -> Linear.

Each GR is a group-rational activation (`layers.activations.group_rational`: G channel groups, one
learnable rational each), so the block is a KAN whose edge functions are shared within groups.
Variance-preserving init (as the paper describes): a Linear after an activation F draws weights with
Var[w] = gain^2 / fan_in, gain^2 = 1 / E[F(x)^2] for x ~ N(0, 1) (1 for the identity, 2.8178 for the
swish-init rational), so activations keep unit variance. `init_std > 0` switches to the plain
N(0, init_std^2) (0.02: what KAT's released code ends up using).
"""

import jax
from flax import nnx

from layers.activations.fit import preset, rational_second_moment
from layers.activations.group_rational import group_rational
from layers.context import LayerContext
from layers.core import Linear


def variance_preserving_gain2(init: str, version: str) -> float:
  """gain^2 = 1 / E[F(x)^2], x ~ N(0, 1), for the rational preset `init` (what the layer starts as)."""
  fit = preset(init, version)
  return 1.0 / rational_second_moment(fit.numerator, fit.denominator, version)


def _kernel_init(init: str, version: str, init_std: float):
  """Initializer of the Linear that follows a group rational initialised as `init`."""
  if init_std > 0:
    return nnx.initializers.truncated_normal(init_std)
  gain2 = variance_preserving_gain2(init, version)
  return nnx.initializers.variance_scaling(gain2, "fan_in", "truncated_normal")


class GRKANFeedForward(nnx.Module):
  """KAT's GR-KAN feed-forward; hidden defaults to d_ff; shared="numerator" as KAT's released kernels."""

  def __init__(self, ctx: LayerContext, *, hidden: int = 0, groups: int = 8, shared: str = "numerator",
               version: str = "A", init_std: float = 0.0, use_bias: bool = True, rngs: nnx.Rngs):
    hidden = hidden or ctx.d_ff
    gr = dict(groups=groups, shared=shared, version=version, rngs=rngs)
    kw = dict(use_bias=use_bias, dtype=ctx.dtype, param_dtype=ctx.param_dtype, rngs=rngs)
    self.act1 = group_rational(ctx.with_features(ctx.d_model), init="identity", **gr)
    self.fc1 = Linear(ctx.d_model, hidden, axes=("embed", "mlp"),
                      kernel_init=_kernel_init("identity", version, init_std), **kw)
    self.act2 = group_rational(ctx.with_features(hidden), init="swish", **gr)
    self.fc2 = Linear(hidden, ctx.d_model, axes=("mlp", "embed"),
                      kernel_init=_kernel_init("swish", version, init_std), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
    return self.fc2(self.act2(self.fc1(self.act1(x))))
