"""KAN feed-forwards: two KAN layers D -> hidden -> D in place of an MLP's Linear-act-Linear.

`kan_ffn` uses B-spline KANLinear layers, `fourier_kan_ffn` FourierKAN layers. A KAN edge holds
(G + k + 1) (B-spline) or 2G (Fourier) weights instead of one, so the default hidden width is the
MLP's d_ff divided by that factor: the same parameter count as the MLP it replaces.
"""

import jax
from flax import nnx

from layers.context import LayerContext
from layers.kan.fourier_kan import FourierKAN
from layers.kan.kan_linear import KANLinear


class KANFeedForward(nnx.Module):
  """down(up(x)) with two KAN layers (their edge functions are the nonlinearity)."""

  def __init__(self, up: nnx.Module, down: nnx.Module):
    self.up, self.down = up, down

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
    return self.down(self.up(x))


def _hidden(ctx: LayerContext, hidden: int, per_edge: int) -> int:
  return hidden or max(ctx.d_ff // per_edge, 1)


def kan_ffn(ctx: LayerContext, *, rngs: nnx.Rngs, hidden: int = 0, grid_size: int = 5, order: int = 3,
            grid_range: tuple[float, float] = (-1.0, 1.0), reg_weight: float = 0.0) -> KANFeedForward:
  """B-spline KAN feed-forward; hidden defaults to d_ff // (G + k + 1) (MLP-equal parameters)."""
  h = _hidden(ctx, hidden, grid_size + order + 1)
  kw = dict(grid_size=grid_size, order=order, grid_range=tuple(grid_range), reg_weight=reg_weight,
            dtype=ctx.dtype, param_dtype=ctx.param_dtype, rngs=rngs)
  return KANFeedForward(KANLinear(ctx.d_model, h, axes=("embed", "mlp"), **kw),
                        KANLinear(h, ctx.d_model, axes=("mlp", "embed"), **kw))


def fourier_kan_ffn(ctx: LayerContext, *, rngs: nnx.Rngs, hidden: int = 0, grid_size: int = 4,
                    smooth_init: bool = False) -> KANFeedForward:
  """Fourier KAN feed-forward; hidden defaults to d_ff // (2G) (MLP-equal parameters)."""
  h = _hidden(ctx, hidden, 2 * grid_size)
  kw = dict(grid_size=grid_size, smooth_init=smooth_init, dtype=ctx.dtype, param_dtype=ctx.param_dtype,
            rngs=rngs)
  return KANFeedForward(FourierKAN(ctx.d_model, h, axes=("embed", "mlp"), **kw),
                        FourierKAN(h, ctx.d_model, axes=("mlp", "embed"), **kw))
