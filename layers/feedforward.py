"""MLP and gated (GLU) feed-forwards; the activation is any registered activation, by name.

mlp:  down(act(up(x)))
glu:  down(act(gate(x)) * up(x))    swiglu / geglu / reglu fix the activation to silu / gelu / relu.
"""

import jax
from flax import nnx

from layers import registry
from layers.context import LayerContext
from layers.core import Linear


class MLP(nnx.Module):
  """Plain MLP; hidden defaults to ctx.d_ff, activation to ctx.activation."""

  def __init__(self, ctx: LayerContext, *, hidden: int = 0, activation: str = "", use_bias: bool = False,
               activation_options: dict | None = None, rngs: nnx.Rngs):
    hidden, activation = hidden or ctx.d_ff, activation or ctx.activation
    kw = dict(use_bias=use_bias, dtype=ctx.dtype, param_dtype=ctx.param_dtype, rngs=rngs)
    self.up = Linear(ctx.d_model, hidden, axes=("embed", "mlp"), **kw)
    self.act = registry.build("activation", activation, ctx.with_features(hidden), rngs=rngs,
                              **(activation_options or {}))
    self.down = Linear(hidden, ctx.d_model, axes=("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
    return self.down(self.act(self.up(x)))


class GLU(nnx.Module):
  """Gated feed-forward with any registered activation on the gate branch; hidden defaults to ctx.d_ff,
  activation to ctx.activation."""

  def __init__(self, ctx: LayerContext, *, hidden: int = 0, activation: str = "", use_bias: bool = False,
               activation_options: dict | None = None, rngs: nnx.Rngs):
    hidden, activation = hidden or ctx.d_ff, activation or ctx.activation
    kw = dict(use_bias=use_bias, dtype=ctx.dtype, param_dtype=ctx.param_dtype, rngs=rngs)
    self.gate = Linear(ctx.d_model, hidden, axes=("embed", "mlp"), **kw)
    self.up = Linear(ctx.d_model, hidden, axes=("embed", "mlp"), **kw)
    self.act = registry.build("activation", activation, ctx.with_features(hidden), rngs=rngs,
                              **(activation_options or {}))
    self.down = Linear(hidden, ctx.d_model, axes=("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
    return self.down(self.act(self.gate(x)) * self.up(x))


def _fixed_glu(act: str):
  """A GLU constructor with the activation fixed (its registry entry takes no activation options)."""

  def ctor(ctx: LayerContext, *, rngs: nnx.Rngs, hidden: int = 0, use_bias: bool = False) -> GLU:
    return GLU(ctx, hidden=hidden, activation=act, use_bias=use_bias, rngs=rngs)

  ctor.__doc__ = f"GLU feed-forward with {act} on the gate."
  return ctor


swiglu = _fixed_glu("silu")
geglu = _fixed_glu("gelu")
reglu = _fixed_glu("relu")
