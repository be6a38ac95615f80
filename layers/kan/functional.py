"""Pure math of Kolmogorov-Arnold layers: B-spline bases, B-spline KAN, Fourier KAN, grid refit.

B-spline KAN ("efficient" form): every edge i -> o carries phi_io(x) = w_io silu(x) + sum_c s_ioc B_c(x),
so a layer is  y = silu(x) @ base_kernel + B(x) . spline_kernel  with B(x) the order-k B-spline bases
on a per-input-channel grid of G + 2k + 1 knots (G intervals, k extra knots each side, G + k bases).
The largest intermediate is the order-0 indicator tensor [N, in, G + 2k]; nothing of size
[N, in, G + k, out] is formed (the contraction is one matmul over the flattened (in, basis) axis).

Fourier KAN: y_o = sum_i sum_{m=1..G} C0[i,m,o] cos(m x_i) + C1[i,m,o] sin(m x_i) + bias_o, computed as
features [N, 2, in, G] @ coeffs [2 * in * G, out]; [N, in, G, out] is never materialised.
"""

import functools

import jax
import jax.numpy as jnp


def uniform_grid(in_features: int, grid_size: int, order: int, grid_range=(-1.0, 1.0),
                 dtype=jnp.float32) -> jax.Array:
  """Knots [in, G + 2k + 1]: G equal intervals over `grid_range`, extended by `order` knots each side."""
  lo, hi = grid_range
  h = (hi - lo) / grid_size
  knots = lo + h * jnp.arange(-order, grid_size + order + 1, dtype=dtype)
  return jnp.broadcast_to(knots, (in_features, grid_size + 2 * order + 1))


@functools.partial(jax.jit, static_argnames=("order",))
def b_spline_basis(x: jax.Array, grid: jax.Array, order: int) -> jax.Array:
  """B-spline bases of `order` by Cox-de Boor on half-open intervals [g_j, g_{j+1}).

  x [..., in], grid [in, G + 2k + 1] -> [..., in, G + k], in x's dtype (fp32 at least inside).
  """
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  x = x.astype(dtype)[..., None]  # [..., in, 1]
  g = grid.astype(dtype)  # [in, G+2k+1]
  bases = ((x >= g[:, :-1]) & (x < g[:, 1:])).astype(dtype)  # [..., in, G+2k]
  for p in range(1, order + 1):
    left = (x - g[:, : -(p + 1)]) / (g[:, p:-1] - g[:, : -(p + 1)]) * bases[..., :-1]
    right = (g[:, p + 1 :] - x) / (g[:, p + 1 :] - g[:, 1:-p]) * bases[..., 1:]
    bases = left + right  # [..., in, G+2k-p]
  return bases


@functools.partial(jax.jit, static_argnames=("order",))
def kan_linear(x: jax.Array, base_kernel: jax.Array, spline_kernel: jax.Array, grid: jax.Array,
               order: int) -> jax.Array:
  """silu(x) @ base_kernel + sum_{i,c} B_ic(x) spline_kernel[i, c, :].

  x [..., in], base_kernel [in, out], spline_kernel [in, G+k, out], grid [in, G+2k+1] -> [..., out].
  Computed in x's dtype; the bases themselves are evaluated in fp32.
  """
  in_features, n_basis, out_features = spline_kernel.shape
  basis = b_spline_basis(x, grid, order).astype(x.dtype)  # [..., in, G+k]
  base = jnp.dot(jax.nn.silu(x), base_kernel.astype(x.dtype))  # [..., out]
  flat = basis.reshape(*x.shape[:-1], in_features * n_basis)  # [..., in*(G+k)]
  return base + jnp.dot(flat, spline_kernel.astype(x.dtype).reshape(in_features * n_basis, out_features))


@functools.partial(jax.jit, static_argnames=("order",))
def kan_edge_activations_mean_abs(x: jax.Array, base_kernel: jax.Array, spline_kernel: jax.Array,
                                  grid: jax.Array, order: int) -> jax.Array:
  """mean over samples of |phi_io(x_i)| per edge, [in, out] (the KAN L1 regulariser's input).

  x [N, in]. Loops over input channels so only [N, out] is alive at a time.
  """
  x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  basis = b_spline_basis(x, grid, order)  # [N, in, G+k]

  def one_input(args):
    xi, bi, wb, ws = args  # [N], [N, G+k], [out], [G+k, out]
    phi = jax.nn.silu(xi)[:, None] * wb + bi @ ws  # [N, out]
    return jnp.mean(jnp.abs(phi), axis=0)

  return jax.lax.map(one_input, (x.T, jnp.swapaxes(basis, 0, 1), base_kernel.astype(jnp.float32),
                                 spline_kernel.astype(jnp.float32)))


def kan_regularizer(edge_mean_abs: jax.Array, *, l1_weight: float = 1.0,
                    entropy_weight: float = 1.0, eps: float = 1e-12) -> jax.Array:
  """Original KAN regulariser: l1 * sum|phi| + entropy * H(|phi| / sum|phi|) over a layer's edges."""
  a = edge_mean_abs.reshape(-1)
  total = jnp.sum(a)
  p = a / (total + eps)
  entropy = -jnp.sum(p * jnp.log(p + eps))
  return l1_weight * total + entropy_weight * entropy


@functools.partial(jax.jit, static_argnames=("grid_size", "order", "grid_eps", "margin"))
def data_grid(x: jax.Array, grid_size: int, order: int, *, grid_eps: float = 0.02,
              margin: float = 0.01) -> jax.Array:
  """Knots fitted to data x [N, in]: per-channel quantiles blended with a uniform grid.

  grid = grid_eps * uniform + (1 - grid_eps) * quantiles over [min - margin, max + margin],
  extended by `order` knots of the uniform step each side -> [in, G + 2k + 1].
  """
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  xs = jnp.sort(x.astype(dtype), axis=0)  # [N, in]
  idx = jnp.linspace(0, xs.shape[0] - 1, grid_size + 1).astype(jnp.int32)
  adaptive = xs[idx]  # [G+1, in]
  step = (xs[-1] - xs[0] + 2 * margin) / grid_size  # [in]
  uniform = xs[0] - margin + step * jnp.arange(grid_size + 1, dtype=dtype)[:, None]
  inner = grid_eps * uniform + (1 - grid_eps) * adaptive  # [G+1, in]
  ext = jnp.arange(1, order + 1, dtype=dtype)[:, None] * step  # [k, in]
  knots = jnp.concatenate([inner[:1] - ext[::-1], inner, inner[-1:] + ext], axis=0)
  return knots.T  # [in, G+2k+1]


@functools.partial(jax.jit, static_argnames=("order",))
def fit_spline_kernel(x: jax.Array, target: jax.Array, grid: jax.Array, order: int) -> jax.Array:
  """Least-squares spline coefficients [in, G+k, out] with B_i(x_i) @ coef_i ~= target_i per channel.

  x [N, in], target [in, N, out] (each input channel's own contribution).
  """
  basis = jnp.swapaxes(b_spline_basis(x, grid, order), 0, 1)  # [in, N, G+k]
  return jax.vmap(lambda a, b: jnp.linalg.lstsq(a, b)[0])(basis, target.astype(basis.dtype))


@functools.partial(jax.jit, static_argnames=("order", "grid_size", "grid_eps", "margin"))
def refit_grid(x: jax.Array, grid: jax.Array, spline_kernel: jax.Array, order: int, *,
               grid_size: int | None = None, grid_eps: float = 0.02, margin: float = 0.01):
  """New (grid, spline_kernel) fitted to data x [N, in] that keep each edge's spline on x.

  grid_size=None keeps G (grid update); a larger G is grid extension (coarse to fine).
  Returns grid [in, G'+2k+1], spline_kernel [in, G'+k, out] (fp32 at least). Forms [in, N, out].
  """
  x = x.reshape(-1, x.shape[-1]).astype(jnp.promote_types(x.dtype, jnp.float32))
  grid_size = grid_size or grid.shape[-1] - 2 * order - 1
  old_basis = b_spline_basis(x, grid, order)  # [N, in, G+k]
  per_edge = jnp.einsum("nic,ico->ino", old_basis, spline_kernel.astype(x.dtype))  # [in, N, out]
  new_grid = data_grid(x, grid_size, order, grid_eps=grid_eps, margin=margin)
  return new_grid, fit_spline_kernel(x, per_edge, new_grid, order)


def fourier_features(x: jax.Array, grid_size: int) -> jax.Array:
  """[cos(m x), sin(m x)] for m = 1..G: x [..., in] -> [..., 2, in, G], computed in fp32 at least."""
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  m = jnp.arange(1, grid_size + 1, dtype=dtype)
  mx = x.astype(dtype)[..., None] * m  # [..., in, G]
  return jnp.stack([jnp.cos(mx), jnp.sin(mx)], axis=-3)


@jax.jit
def fourier_kan(x: jax.Array, coeffs: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """sum_i sum_m C0[i,m,o] cos(m x_i) + C1[i,m,o] sin(m x_i) (+ bias_o).

  x [..., in], coeffs [2, in, G, out] (cos, sin; frequency 1..G), bias [out] -> [..., out] in x's dtype.
  """
  _, in_features, grid_size, out_features = coeffs.shape
  feats = fourier_features(x, grid_size).astype(x.dtype)  # [..., 2, in, G]
  flat = feats.reshape(*x.shape[:-1], 2 * in_features * grid_size)
  y = jnp.dot(flat, coeffs.astype(x.dtype).reshape(2 * in_features * grid_size, out_features))
  if bias is not None:
    y = y + bias.astype(x.dtype)
  return y
