"""E experts = one registered feed-forward, built E times with its parameters stacked on an "expert" axis.

Any registered ffn works as an expert (GLU with any activation, MLP with PolyNorm, the GR-KAN
feed-forward, ...): `grouped` vmaps it over capacity buffers [E, C, D]. MLP / GLU experts (the
`layers.feedforward` classes) also run `ragged` over expert-sorted rows (dropless dispatch),
either with `jax.lax.ragged_dot` or with a tiled block-diagonal matmul. A learnable activation
inside such an expert keeps per-expert coefficients; each row uses its expert's.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from layers import registry
from layers.context import LayerContext
from layers.feedforward import GLU, MLP
from layers.moe import dispatch

GROUPED_MATMULS = ("ragged_dot", "tiled")


def grouped_matmul_impl(name: str) -> str:
  """The grouped matmul `name` stands for: "auto" is "tiled" on CPU (where XLA lowers ragged_dot to a dense
  masked matmul over all experts) and "ragged_dot" elsewhere; a ValueError names the choices otherwise."""
  if name == "auto":
    return "tiled" if jax.default_backend() == "cpu" else "ragged_dot"
  if name not in GROUPED_MATMULS:
    raise ValueError(f"unknown grouped_matmul {name!r}; choose 'auto' or {GROUPED_MATMULS}")
  return name


def grouped_matmul(x: jax.Array, w: jax.Array, groups: dispatch.Groups, *, impl: str, tile: int) -> jax.Array:
  """One projection of expert-sorted rows: row r of x [M, I] times w[expert of r] (w [E, I, O]) -> [M, O].

  impl "ragged_dot" (`jax.lax.ragged_dot`) or "tiled" (`dispatch.tiled_matmul` over groups padded to `tile`).
  """
  if impl == "ragged_dot":
    return jax.lax.ragged_dot(x, w, groups.group_sizes)
  tiles = dispatch.tile_layout(groups, tile)
  return dispatch.from_tiles(dispatch.tiled_matmul(dispatch.to_tiles(x, tiles), w, tiles), tiles)


def _prepend_expert_axis(module: nnx.Module) -> None:
  for _, var in nnx.iter_graph(module):
    if isinstance(var, nnx.Variable) and "axes" in var.get_metadata():
      var.set_metadata(axes=("expert", *var.get_metadata()["axes"]))


def build_stacked(kind: str, name: str, ctx: LayerContext, n: int, *, rngs: nnx.Rngs,
                  **options) -> nnx.Module:
  """The registered layer `name`, built n times with independent init; params stacked on a leading axis."""

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(r: nnx.Rngs):
    return registry.build(kind, name, ctx, rngs=r, **options)

  module = make(rngs.fork())
  _prepend_expert_axis(module)
  return module


def split_stacked(module: nnx.Module) -> tuple[Any, Any, Any]:
  """(graphdef, params, rest): the stacked Params and everything else (e.g. sow buffers), as pytrees."""
  return nnx.split(module, nnx.Param, ...)


def _apply_stacked(graphdef, params: Any, rest: Any, x: jax.Array) -> jax.Array:
  """Apply the stacked module to x, one parameter slice per leading entry.  params [E, ...], x [E, ...]"""
  return jax.vmap(lambda p, xe: nnx.merge(graphdef, p, rest)(xe))(params, x)


def _per_row_activation(act: Any, h: jax.Array, expert_of_row: jax.Array) -> jax.Array:
  """act(h) where row r uses expert expert_of_row[r]'s activation coefficients.  h [M, F]"""
  if not isinstance(act, nnx.Module):
    return act(h)
  graphdef, params, rest = split_stacked(act)
  rows = jax.tree.map(lambda p: p[expert_of_row], params)
  return _apply_stacked(graphdef, rows, rest, h)


class Experts(nnx.Module):
  """n_experts copies of the feed-forward `expert_ffn` (registry name), stacked."""

  def __init__(self, ctx: LayerContext, n_experts: int, expert_ffn: str, hidden: int, *, rngs: nnx.Rngs,
               options: dict | None = None):
    options = dict(options or {})
    if hidden:
      options["hidden"] = hidden
    self.n_experts = n_experts
    self.ffn = build_stacked("ffn", expert_ffn, ctx, n_experts, rngs=rngs, **options)
    self.dtype = ctx.dtype

  @property
  def supports_ragged(self) -> bool:
    return isinstance(self.ffn, MLP | GLU)

  def split(self) -> tuple[Any, Any, Any]:
    """(graphdef, params with leading expert axis, rest) for use inside jax transforms."""
    return split_stacked(self.ffn)

  def grouped(self, x: jax.Array) -> jax.Array:  # [E, C, D] -> [E, C, D]
    return grouped_apply(*self.split(), x)

  def weighted_sum(self, x: jax.Array, weights: jax.Array) -> jax.Array:
    """sum_e weights[:, e] * expert_e(x): every expert on every token.  x [N, D], weights [N, E] -> [N, D]

    MLP / GLU experts run as one dense ffn over all experts' hidden units (each unit scaled by its expert's
    weight before the down projection): the cost of the dense ffn, no dispatch. Other ffns: vmapped.
    """
    if not self.supports_ragged:
      y = self.grouped(jnp.broadcast_to(x, (self.n_experts, *x.shape)))  # [E, N, D]
      return jnp.einsum("ne,end->nd", weights.astype(y.dtype), y)
    f, dtype = self.ffn, self.dtype

    def up(lin):  # [N, D] -> [N, E, F]: all experts' units, one [D, E * F] matmul
      k = lin.kernel[...].astype(dtype)  # [E, D, F]
      y = (x.astype(dtype) @ jnp.swapaxes(k, 0, 1).reshape(k.shape[1], -1)).reshape(x.shape[0], *k.shape[::2])
      return y if lin.bias is None else y + lin.bias[...].astype(dtype)

    h = up(f.gate if isinstance(f, GLU) else f.up)
    if isinstance(f.act, nnx.Module):  # per-expert activation coefficients
      h = jnp.swapaxes(_apply_stacked(*split_stacked(f.act), jnp.swapaxes(h, 0, 1)), 0, 1)
    else:
      h = f.act(h)
    if isinstance(f, GLU):
      h = h * up(f.up)
    w = weights.astype(dtype)
    down = f.down.kernel[...].astype(dtype)  # [E, F, D]
    y = (h * w[..., None]).reshape(x.shape[0], -1) @ down.reshape(-1, down.shape[-1])
    return y if f.down.bias is None else y + w @ f.down.bias[...].astype(dtype)

  def ragged(self, x: jax.Array, groups: dispatch.Groups, *, impl: str = "ragged_dot",
             tile: int = 128) -> jax.Array:
    """Expert-sorted rows x [M, D] -> [M, D], every row through its own expert (MLP / GLU experts)."""
    return sorted_apply(self.ffn, x, groups, impl=impl, tile=tile, dtype=self.dtype)


def sorted_apply(ffn: MLP | GLU, x: jax.Array, groups: dispatch.Groups, *, impl: str, tile: int,
                 dtype) -> jax.Array:
  """The stacked MLP / GLU experts `ffn` [E, ...] on expert-sorted rows x [M, D] -> [M, D].

  Rows past sum(groups.group_sizes) are padding: they come out finite and are not used.
  impl "ragged_dot": one `jax.lax.ragged_dot` per projection (native grouped matmul on TPU / GPU).
  impl "tiled": groups padded to multiples of `tile` rows, one matmul per tile with its expert's
  weights (`dispatch.tiled_matmul`); at most E * tile padding rows. XLA:CPU lowers ragged_dot to a
  dense masked matmul over all E experts, so this is the fast form there.
  """
  expert_of_row = jnp.minimum(groups.expert_of_row, groups.group_sizes.shape[0] - 1)  # padding: any expert
  if impl == "ragged_dot":
    def proj(lin, h):
      return jax.lax.ragged_dot(h, lin.kernel[...].astype(dtype), groups.group_sizes)

    return _apply_rows(ffn, x, proj, expert_of_row, dtype)
  if impl == "tiled":
    tiles = dispatch.tile_layout(groups, tile)

    def proj(lin, h):
      return dispatch.tiled_matmul(h, lin.kernel[...].astype(dtype), tiles)

    rows = _apply_rows(ffn, dispatch.to_tiles(x, tiles), proj, jnp.repeat(tiles.tile_expert, tile), dtype)
    return dispatch.from_tiles(rows, tiles)
  raise ValueError(f"unknown grouped matmul {impl!r}; choose from {GROUPED_MATMULS}")


def _apply_rows(f: MLP | GLU, x: jax.Array, proj, expert_of_row: jax.Array, dtype) -> jax.Array:
  """The MLP / GLU expert on rows x [M, D], row r in expert expert_of_row[r]; proj does the matmuls."""

  def linear(lin, h):
    y = proj(lin, h.astype(dtype))
    if lin.bias is not None:
      y = y + lin.bias[...].astype(dtype)[expert_of_row]
    return y

  h = _per_row_activation(f.act, linear(f.gate if isinstance(f, GLU) else f.up, x), expert_of_row)
  if isinstance(f, GLU):
    h = h * linear(f.up, x)
  return linear(f.down, h)


def grouped_apply(graphdef, params: Any, rest: Any, x: jax.Array) -> jax.Array:
  """Expert e applied to buffer x[e]: params [E, ...], x [E, C, D] -> [E, C, D]."""
  return _apply_stacked(graphdef, params, rest, x).astype(x.dtype)
