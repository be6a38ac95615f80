"""Group-rational activation (GR-KAN, Kolmogorov-Arnold Transformer): one rational per channel group.

Channels of the last axis are split into G contiguous groups; channel c uses group c // (F / G).
`shared` picks which coefficients all groups share: "none" (each group its own rational),
"numerator" (what KAT's released kernels do: one numerator, per-group denominators) or
"denominator" (the reverse, as the KAT paper's text describes it).
"""

from flax import nnx

from layers.activations import functional
from layers.activations.rational import Rational
from layers.context import LayerContext

SHARING = ("none", "numerator", "denominator")


def group_rational(ctx: LayerContext, *, rngs: nnx.Rngs, groups: int = 8, shared: str = "none",
                   version: str = "A", numerator_degree: int = 5, denominator_degree: int = 4,
                   init: str = "swish", noise: float = 0.1) -> Rational:
  """G rationals over contiguous channel groups of the ctx.features channels (KAT: G = 8, swish init)."""
  functional.check_version(version)
  if shared not in SHARING:
    raise ValueError(f"unknown group_rational sharing {shared!r}; choose from {SHARING}")
  if groups < 1 or ctx.features % groups:
    raise ValueError(f"{ctx.features} channels cannot be split into {groups} equal groups")
  return Rational(version=version, numerator_degree=numerator_degree, denominator_degree=denominator_degree,
                  init=init, groups=groups, share_numerator=shared == "numerator",
                  share_denominator=shared == "denominator", noise=noise, features=ctx.features,
                  param_dtype=ctx.param_dtype, rngs=rngs)
