"""KANLinear: a B-spline Kolmogorov-Arnold layer with data-driven grid update and grid extension.

y = silu(x) @ base_kernel + B(x) . spline_kernel (see `functional.kan_linear`). The knots live in a
non-trainable `KANGrid` variable. `update_grid(x)` moves the knots to the data (quantiles blended
with uniform) and `extend_grid(x, G')` refines coarse -> fine; both re-solve the spline coefficients
by least squares so the layer's function on x is unchanged. Both change state outside the
optimizer: call them between steps (eagerly or under nnx.jit) and rebuild the optimizer state when
the shapes change (grid extension).
With `reg_weight > 0` the original KAN regulariser (L1 of mean |phi| per edge + entropy) is sown as
an `AuxLoss` named "kan_reg".
"""

import jax
import jax.numpy as jnp
from flax import nnx

from layers.aux import AuxLoss
from layers.core import make_param
from layers.kan import functional


class KANGrid(nnx.Variable):
  """Spline knots [in, G + 2k + 1]; state, not trained by the optimizer."""


class KANLinear(nnx.Module):
  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    grid_size: int = 5,
    order: int = 3,
    grid_range: tuple[float, float] = (-1.0, 1.0),
    spline_init_scale: float = 0.1,
    reg_weight: float = 0.0,
    l1_weight: float = 1.0,
    entropy_weight: float = 1.0,
    axes: tuple[str | None, str | None] = ("embed", "mlp"),
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.order = order
    self.axes = axes
    self.dtype = dtype
    self.reg_weight, self.l1_weight, self.entropy_weight = reg_weight, l1_weight, entropy_weight
    base_init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    spline_init = nnx.initializers.variance_scaling(spline_init_scale**2, "fan_in", "normal", in_axis=0,
                                                    out_axis=2)
    self.base_kernel = make_param(base_init, rngs.params(), (in_features, out_features), param_dtype, axes)
    self.spline_kernel = make_param(spline_init, rngs.params(),
                                    (in_features, grid_size + order, out_features), param_dtype,
                                    (axes[0], None, axes[1]))
    grid = functional.uniform_grid(in_features, grid_size, order, grid_range)
    self.grid = KANGrid(grid, axes=(axes[0], None))

  @property
  def grid_size(self) -> int:
    return self.grid[...].shape[-1] - 2 * self.order - 1

  def extra_flops_per_token(self, seq_len: int) -> float:
    """Cox-de Boor bases (about 6 FLOPs per basis per order) and silu, per input channel; the two
    matmuls are counted from the kernels."""
    n_in, n_knots = self.grid.shape
    return float(n_in * (6 * self.order * (n_knots - 1) + 4))

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., in] -> [..., out]
    x = x.astype(self.dtype)
    y = functional.kan_linear(x, self.base_kernel[...], self.spline_kernel[...], self.grid[...], self.order)
    if self.reg_weight > 0:
      edge = functional.kan_edge_activations_mean_abs(x, self.base_kernel[...], self.spline_kernel[...],
                                                      self.grid[...], self.order)
      reg = functional.kan_regularizer(edge, l1_weight=self.l1_weight, entropy_weight=self.entropy_weight)
      self.sow(AuxLoss, "kan_reg", self.reg_weight * reg)
    return y

  def _refit(self, x: jax.Array, grid_size: int | None, grid_eps: float, margin: float) -> None:
    grid, kernel = functional.refit_grid(x, self.grid[...], self.spline_kernel[...], self.order,
                                         grid_size=grid_size, grid_eps=grid_eps, margin=margin)
    self.grid = KANGrid(grid.astype(self.grid[...].dtype), axes=(self.axes[0], None))
    dtype = self.spline_kernel[...].dtype
    self.spline_kernel = nnx.Param(kernel.astype(dtype), axes=(self.axes[0], None, self.axes[1]))

  def update_grid(self, x: jax.Array, *, grid_eps: float = 0.02, margin: float = 0.01) -> None:
    """Refit the knots to inputs x [..., in], keeping the function on x (least squares)."""
    self._refit(x, None, grid_eps, margin)

  def extend_grid(self, x: jax.Array, grid_size: int, *, grid_eps: float = 0.02,
                  margin: float = 0.01) -> None:
    """Refine to `grid_size` intervals (coarse -> fine) fitted to x [..., in], keeping the function."""
    if grid_size < self.grid_size:
      raise ValueError(f"grid extension goes coarse -> fine: {grid_size} < current {self.grid_size}")
    self._refit(x, grid_size, grid_eps, margin)
