"""Rational activation F(x) = P(x) / Q(x) with learnable coefficients (PAU), per layer or per channel group.

The coefficients start as a least-squares fit of a familiar activation (`init`, see
`layers.activations.fit`) and are tagged optim_group="activation" so the optimizer can give
them their own learning rate and no weight decay. Version D draws numerator noise from the
"dropout" rng stream while training: `deterministic=False`, switched by `model.train()` / `model.eval()`
or `nnx.view(model, deterministic=...)` like Dropout. The op (`rational_op`) is finite over the whole fp32
range whenever the exact value is, its backward fused.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from layers.activations import functional
from layers.activations.fit import preset
from layers.context import LayerContext
from layers.core import make_param


def _coefficients(values: np.ndarray, groups: int, shared: bool, param_dtype, rngs: nnx.Rngs) -> nnx.Param:
  """[k] if shared by all groups, else [G, k] (every group starts from the same values)."""
  shape = (len(values),) if shared else (groups, len(values))

  def init(key, shape, dtype):
    del key
    return jnp.broadcast_to(jnp.asarray(values, dtype), shape)

  return make_param(init, rngs.params(), shape, param_dtype, (None,) * len(shape), optim_group="activation")


class Rational(nnx.Module):
  """Learnable rational activation; `groups` > 1 gives channel c the rational of group c // (F / G)."""

  def __init__(
    self,
    *,
    version: str = "A",
    numerator_degree: int = 5,
    denominator_degree: int = 4,
    init: str = "leaky_relu",
    groups: int = 1,
    share_numerator: bool = True,
    share_denominator: bool = True,
    noise: float = 0.1,
    features: int = 0,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    fit = preset(init, version, numerator_degree, denominator_degree)
    self.features = features  # width it acts on, for FLOP accounting
    self.numerator = _coefficients(fit.numerator, groups, share_numerator or groups == 1, param_dtype, rngs)
    self.denominator = _coefficients(fit.denominator, groups, share_denominator or groups == 1, param_dtype,
                                     rngs)
    self.version = version
    self.noise = noise
    self.deterministic = False
    if version == "D":
      if "dropout" not in rngs and "default" not in rngs:
        raise ValueError("rational version D needs a 'dropout' (or 'default') stream in rngs for its noise")
      self.rngs = rngs["dropout"].fork()
    else:
      self.rngs = nnx.data(None)

  def set_view(self, deterministic: bool | None = None):
    """`nnx.view(model, deterministic=True)` switches version D's noise off (like Dropout)."""
    if deterministic is not None:
      self.deterministic = deterministic

  def flops_per_token(self, seq_len: int) -> float:
    """Horner on numerator (2m) and denominator (2n), |x|, 1 + ..., the division: per feature."""
    m, n = self.numerator.shape[-1] - 1, self.denominator.shape[-1]
    return float(self.features * (2 * (m + n) + 3))

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., F] -> [..., F]
    rng = self.rngs() if self.rngs is not None and not self.deterministic else None
    return functional.group_rational(x, self.numerator[...], self.denominator[...], self.version, rng=rng,
                                     noise=self.noise)


def rational(ctx: LayerContext, *, rngs: nnx.Rngs, version: str = "A", numerator_degree: int = 5,
             denominator_degree: int = 4, init: str = "leaky_relu", noise: float = 0.1) -> Rational:
  """PAU: one rational for the whole layer (version A = safe PAU)."""
  functional.check_version(version)
  return Rational(version=version, numerator_degree=numerator_degree, denominator_degree=denominator_degree,
                  init=init, noise=noise, features=ctx.features, param_dtype=ctx.param_dtype, rngs=rngs)
