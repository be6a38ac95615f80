"""S-KAN: a Kolmogorov-Arnold layer whose output nodes each select their activation space (Yang, Zhang, Luo,
Lu, Shen, "Activation Space Selectable Kolmogorov-Arnold Networks", arXiv 2408.08338, 2024).

A pool of activation spaces s (each a KAN basis φ_s: B-spline, Chebyshev, Gaussian RBF, Fourier) feeds every
output node j; node j mixes the spaces with selection weights w_sj:

    y_j = Σ_s w_sj Σ_i Σ_c K_s[i, c, j] φ_sc(x_i),      w_:j = softmax over the node's allowed spaces of θ_:j.

Training follows the paper's three stages: (1) full training, every space active and θ learned; (2) selective
training, each node keeps only its highest-weight space (`select()`, or automatically after `select_step`
optimizer steps through the `end_step` hook the training loop calls), its weight then exactly 1; (3) pruning
(`prune()`), which drops every (space, node) pair not selected, so the layer stores and computes only each
node's own space (the function is unchanged). What this code could confirm of the paper is the pool of
spaces per node, the weighted combination and these three stages (its text beyond the abstract could not be
read here); the softmax parameterisation of the weights (θ = 0 at init: the spaces start equal), the argmax
rule, the pool and each space's size are this code's choices, every one an option. Sizes: B-spline
G + k + 1 features per edge (silu base + G + k bases on a uniform grid over `grid_range`), Chebyshev
T_0..T_{G+k-1}(tanh x), RBF G + k Gaussians over `grid_range`, Fourier cos / sin of 1..G.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from layers.context import LayerContext
from layers.core import make_param
from layers.kan import functional
from layers.kan.feedforward import KANFeedForward, _hidden


def _bspline(x, grid_size, order, grid_range):
  grid = functional.uniform_grid(x.shape[-1], grid_size, order, grid_range)
  return jnp.swapaxes(functional.kan_features(x, grid, order), -1, -2)


def _fourier(x, grid_size, order, grid_range):
  f = functional.fourier_features(x, grid_size)  # [..., 2, in, G]
  return jnp.moveaxis(f, -3, -2).reshape(*x.shape, 2 * grid_size)


SPACES = {  # name: (features per edge (G, k), features x [..., in] -> [..., in, n])
  "bspline": (lambda g, k: g + k + 1, _bspline),
  "chebyshev": (lambda g, k: g + k, lambda x, g, k, r: functional.chebyshev_features(x, g + k - 1)),
  "rbf": (lambda g, k: g + k, lambda x, g, k, r: functional.rbf_features(x, g + k, r)),
  "fourier": (lambda g, k: 2 * g, _fourier),
}


def space_features(space: str, x: jax.Array, grid_size: int, order: int, grid_range) -> jax.Array:
  """φ_s(x): x [..., in] -> [..., in, n_s] (fp32 at least) for a space of `SPACES`."""
  return SPACES[space][1](x, grid_size, order, tuple(grid_range))


class SKANState(nnx.Variable):
  """Selection mask and step counter: state, not trained, checkpointed with the run."""


class SKANLinear(nnx.Module):
  def __init__(self, in_features: int, out_features: int, *, spaces=("bspline", "chebyshev", "rbf", "fourier"),
               grid_size: int = 5, order: int = 3, grid_range: tuple[float, float] = (-1.0, 1.0),
               select_step: int = 0, axes: tuple[str | None, str | None] = ("embed", "mlp"), dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    unknown = set(spaces) - set(SPACES)
    if unknown or not spaces or len(set(spaces)) != len(spaces):
      raise ValueError(f"S-KAN spaces must be distinct names from {sorted(SPACES)}; got {tuple(spaces)}")
    if select_step < 0:
      raise ValueError(f"select_step counts optimizer steps (0: select only by calling select()); got {select_step}")
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2)
    self.kernels = nnx.Dict({s: make_param(init, rngs.params(), (in_features, SPACES[s][0](grid_size, order),
                                                                 out_features), param_dtype, (axes[0], None, axes[1]))
                             for s in spaces})
    self.logits = make_param(nnx.initializers.zeros, rngs.params(), (len(spaces), out_features), param_dtype,
                             (None, axes[1]), optim_group="no_decay")
    self.mask = SKANState(jnp.ones((len(spaces), out_features), jnp.bool_), axes=(None, axes[1]))
    self.steps = SKANState(jnp.zeros((), jnp.int32))
    self.spaces = tuple(spaces)  # the order of θ's rows (an nnx.Dict does not keep its insertion order)
    self.order_out = None  # after prune(): output column of each pruned column, concatenated over spaces
    self.grid_size, self.order, self.grid_range = grid_size, order, tuple(grid_range)
    self.select_step, self.axes, self.dtype = select_step, axes, dtype

  @property
  def pruned(self) -> bool:
    return self.order_out is not None

  def flops_per_token(self, seq_len: int) -> float:
    """Each space's matmul over its kept columns plus its features (about 4 FLOPs per feature; B-spline:
    Cox-de Boor's ~6 per basis per order, as KANLinear counts); the selection weights are negligible."""
    total = 0.0
    for space in self.spaces:
      n_in, n, cols = self.kernels[space].shape
      per_feature = 6 * self.order if space == "bspline" else 4
      total += 2.0 * n_in * n * cols + n_in * n * per_feature
    return total

  def selection_weights(self) -> jax.Array:
    """w [S, out]: softmax of θ over each node's allowed spaces (one-hot once selected)."""
    logits = self.logits[...]
    logits = jnp.where(self.mask[...], logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -jnp.inf)
    return jax.nn.softmax(logits, axis=0)

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., in] -> [..., out]
    x = x.astype(self.dtype)
    w = None if self.pruned else self.selection_weights()
    outs = []
    for i, space in enumerate(self.spaces):
      kernel = self.kernels[space]
      k = kernel[...] if w is None else kernel[...] * w[i].astype(kernel.dtype)
      feats = space_features(space, x, self.grid_size, self.order, self.grid_range).astype(self.dtype)
      outs.append(jnp.dot(feats.reshape(*x.shape[:-1], -1), k.astype(self.dtype).reshape(-1, k.shape[-1])))
    if w is None:
      return jnp.take(jnp.concatenate(outs, axis=-1), jnp.asarray(self.order_out), axis=-1)
    return functools.reduce(jnp.add, outs)

  def selected(self) -> jax.Array:
    """Each node's highest-weight allowed space as a one-hot mask [S, out]."""
    best = jnp.argmax(jnp.where(self.mask[...], self.logits[...], -jnp.inf), axis=0)
    return jax.nn.one_hot(best, self.mask.shape[0], axis=0, dtype=jnp.bool_)

  def select(self) -> None:
    """Stage 2: every node keeps only its highest-weight space."""
    self.mask[...] = self.selected()

  def end_step(self) -> None:
    """Once per optimizer step (`layers.aux.end_step`): count, and select at step `select_step`."""
    self.steps[...] = self.steps[...] + 1
    if self.select_step and not self.pruned:
      self.mask[...] = jnp.where(self.steps[...] == self.select_step, self.selected(), self.mask[...])

  def prune(self) -> None:
    """Stage 3: keep each space's kernel columns for the nodes that selected it (and no other space, no
    weights); outputs unchanged. Eager (it changes shapes): call between steps and rebuild the optimizer."""
    mask = jax.device_get(self.mask[...])
    if self.pruned or not (mask.sum(0) == 1).all():
      raise ValueError("prune() needs every node to have selected one space: call select() first (once)")
    kernels, cols = {}, []
    for i, space in enumerate(self.spaces):
      nodes = jnp.flatnonzero(mask[i])
      if nodes.size:
        kernels[space] = nnx.Param(self.kernels[space][...][..., nodes], axes=(self.axes[0], None, self.axes[1]))
        cols.append(nodes)
    self.kernels, self.spaces = nnx.Dict(kernels), tuple(kernels)
    self.order_out = tuple(int(c) for c in jnp.argsort(jnp.concatenate(cols)))
    self.logits = self.mask = None


class SKANFeedForward(KANFeedForward):
  """Two S-KAN layers D -> hidden -> D; hidden defaults to d_ff // (features per edge summed over the spaces),
  an MLP's parameter count before pruning."""

  def __init__(self, ctx: LayerContext, *, rngs: nnx.Rngs, hidden: int = 0,
               spaces=("bspline", "chebyshev", "rbf", "fourier"), grid_size: int = 5, order: int = 3,
               grid_range: tuple[float, float] = (-1.0, 1.0), select_step: int = 0):
    per_edge = sum(SPACES[s][0](grid_size, order) for s in spaces if s in SPACES)
    h = _hidden(ctx, hidden, max(per_edge, 1))
    kw = dict(spaces=tuple(spaces), grid_size=grid_size, order=order, grid_range=tuple(grid_range),
              select_step=select_step, dtype=ctx.dtype, param_dtype=ctx.param_dtype, rngs=rngs)
    super().__init__(SKANLinear(ctx.d_model, h, axes=("embed", "mlp"), **kw),
                     SKANLinear(h, ctx.d_model, axes=("mlp", "embed"), **kw))


def prune(model: nnx.Module) -> int:
  """Stage 3 on every S-KAN layer of `model` (each must have selected); returns how many were pruned."""
  layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, SKANLinear)]
  for layer in layers:
    layer.prune()
  return len(layers)
