"""Pure math of Kolmogorov-Arnold layers: B-spline bases, B-spline KAN, Fourier KAN, grid refit, and the
Chebyshev and Gaussian-RBF bases of S-KAN's activation spaces.

B-spline KAN ("efficient" form): every edge i -> o carries phi_io(x) = w_io silu(x) + sum_c s_ioc B_c(x),
so a layer is  y = silu(x) @ base_kernel + B(x) . spline_kernel  with B(x) the order-k B-spline bases
on a per-input-channel grid of G + 2k + 1 knots (G intervals, k extra knots each side, G + k bases).
`kan_linear` is one matmul of the features [silu(x_i), B_i(x_i)] [N, (G+k+1) * in] with the stacked
kernels and a hand-written backward (analytic basis derivatives); on a uniform grid the bases are cardinal
B-splines of (x - t_c) / h, computed per basis, otherwise Cox-de Boor (whose order-0 indicators,
[N, in, G + 2k], are then the largest intermediate). Nothing of size [N, in, G + k, out] is formed.

Fourier KAN: y_o = sum_i sum_{m=1..G} C0[i,m,o] cos(m x_i) + C1[i,m,o] sin(m x_i) + bias_o, computed as
features [N, 2, in, G] @ coeffs [2 * in * G, out]; [N, in, G, out] is never materialised.
"""

import functools
import math

import jax
import jax.numpy as jnp


def uniform_grid(in_features: int, grid_size: int, order: int, grid_range=(-1.0, 1.0),
                 dtype=jnp.float32) -> jax.Array:
  """Knots [in, G + 2k + 1]: G equal intervals over `grid_range`, extended by `order` knots each side."""
  lo, hi = grid_range
  h = (hi - lo) / grid_size
  knots = lo + h * jnp.arange(-order, grid_size + order + 1, dtype=dtype)
  return jnp.broadcast_to(knots, (in_features, grid_size + 2 * order + 1))


def _cox_de_boor(x: jax.Array, grid: jax.Array, order: int) -> list[jax.Array]:
  """Bases of orders 0..order by Cox-de Boor on half-open intervals: x [..., in] -> [[..., in, G+2k-p]]."""
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  x = x.astype(dtype)[..., None]  # [..., in, 1]
  g = grid.astype(dtype)  # [in, G+2k+1]
  levels = [((x >= g[:, :-1]) & (x < g[:, 1:])).astype(dtype)]  # [..., in, G+2k]
  for p in range(1, order + 1):
    bases = levels[-1]
    left = (x - g[:, : -(p + 1)]) / (g[:, p:-1] - g[:, : -(p + 1)]) * bases[..., :-1]
    right = (g[:, p + 1 :] - x) / (g[:, p + 1 :] - g[:, 1:-p]) * bases[..., 1:]
    levels.append(left + right)  # [..., in, G+2k-p]
  return levels


@functools.partial(jax.jit, static_argnames=("order",))
def b_spline_basis(x: jax.Array, grid: jax.Array, order: int) -> jax.Array:
  """B-spline bases of `order` by Cox-de Boor on half-open intervals [g_j, g_{j+1}) (the specification).

  x [..., in], grid [in, G + 2k + 1] -> [..., in, G + k], fp32 at least.
  """
  return _cox_de_boor(x, grid, order)[-1]


def is_uniform(grid: jax.Array) -> jax.Array:
  """Whether every channel's knots are equally spaced (to fp32 rounding): a bool scalar."""
  n = grid.shape[-1] - 1
  lo, hi = grid[:, :1], grid[:, -1:]
  uniform = lo + (hi - lo) * (jnp.arange(n + 1, dtype=grid.dtype) / n)
  return jnp.all(jnp.abs(grid - uniform) <= 1e-5 * (jnp.abs(lo) + jnp.abs(hi)))


def _cardinal(v: jax.Array, order: int) -> jax.Array:
  """M_k(v), the cardinal B-spline of order k on [0, k + 1) (unit knots 0..k+1), elementwise.

  k = 0: [0 <= v < 1] (Cox-de Boor's half-open interval). k >= 1: by symmetry about (k+1)/2, with
  w = min(v, k + 1 - v), M_k = (1/k!) sum_{i < (k+1)/2} (-1)^i C(k+1, i) max(w - i, 0)^k: only the terms of
  the left half, so no large cancelling powers (w <= (k+1)/2); w <= 0 outside the support gives 0.
  """
  if not order:
    return ((v >= 0) & (v < 1)).astype(v.dtype)
  w = jnp.minimum(v, order + 1 - v)
  total = sum((-1) ** i * math.comb(order + 1, i) * jnp.maximum(w - i, 0.0) ** order
              for i in range(math.ceil((order + 1) / 2)))
  return total / math.factorial(order)


def _uniform_bases(x: jax.Array, grid: jax.Array, order: int, derivative: bool) -> jax.Array:
  """B_c(x) (or dB_c/dx) on a uniform grid: x [..., in] -> [..., G+k, in]. B_c(x) = M_k((x - t_c) / h) and
  dB_c/dx = (M_{k-1}(v) - M_{k-1}(v - 1)) / h, h the knot spacing (`_cardinal`): a few FLOPs per value, each
  computed where it is stored, vectorised along the input channels."""
  h = (grid[:, -1] - grid[:, 0]) / (grid.shape[-1] - 1)  # [in]
  v = (x[..., None, :] - grid[:, : grid.shape[-1] - order - 1].T) / h  # [..., G+k, in], from each basis' first knot
  if not derivative:
    return _cardinal(v, order)
  if not order:
    return jnp.zeros_like(v)
  return (_cardinal(v, order - 1) - _cardinal(v - 1, order - 1)) / h


def _general_bases(x: jax.Array, grid: jax.Array, order: int, derivative: bool) -> jax.Array:
  """As `_uniform_bases` for any knots, by Cox-de Boor; dB_c/dx from the order-(k-1) bases,
  k (B^{k-1}_c / (t_{c+k} - t_c) - B^{k-1}_{c+1} / (t_{c+k+1} - t_{c+1}))."""
  levels = _cox_de_boor(x, grid, order)  # [..., in, G+2k-p]
  if not derivative:
    out = levels[-1]
  elif not order:
    out = jnp.zeros_like(levels[-1])
  else:
    span = grid.astype(x.dtype)[:, order:] - grid.astype(x.dtype)[:, :-order]  # t_{c+k} - t_c, [in, G+k+1]
    scaled = order * levels[-2] / span
    out = scaled[..., :-1] - scaled[..., 1:]
  return jnp.swapaxes(out, -1, -2)


def _silu_and_slope(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  sig = jax.nn.sigmoid(x)
  return x * sig, sig * (1 + x * (1 - sig))


def _by_grid(fn, x: jax.Array, grid: jax.Array, *args):
  """fn(path, x, grid, *args) with path the uniform closed form when the grid is uniform, Cox-de Boor
  otherwise (a lax.cond on the knots, which grid updates make data-dependent); x, grid in fp32 at least."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  grid = grid.astype(x.dtype)
  return jax.lax.cond(is_uniform(grid), functools.partial(fn, _uniform_bases), functools.partial(fn, _general_bases),
                      x, grid, *args)


def kan_features(x: jax.Array, grid: jax.Array, order: int, derivative: bool = False) -> jax.Array:
  """Per input channel [silu(x), B_0(x), .., B_{G+k-1}(x)] (or their x-derivatives): x [..., in] ->
  [..., G+k+1, in], fp32 at least, the feature index before the channel (the layout the spline matmul
  reads, and the one XLA vectorises along the channels)."""
  def stack(path, x, grid):
    return jnp.concatenate([_silu_and_slope(x)[int(derivative)][..., None, :], path(x, grid, order, derivative)],
                           axis=-2)

  return _by_grid(stack, x, grid)


def _kernel(base_kernel: jax.Array, spline_kernel: jax.Array, dtype) -> jax.Array:
  """[base; spline] weights in the features' order (feature, then input channel): [(G+k+1) * in, out]."""
  w = jnp.concatenate([base_kernel[None], jnp.swapaxes(spline_kernel, 0, 1)], axis=0).astype(dtype)
  return w.reshape(-1, w.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def kan_linear(x: jax.Array, base_kernel: jax.Array, spline_kernel: jax.Array, grid: jax.Array,
               order: int) -> jax.Array:
  """silu(x) @ base_kernel + sum_{i,c} B_ic(x) spline_kernel[i, c, :], as one matmul of the per-input
  features [silu(x_i), B_i0(x_i), ..] [..., (G+k+1) * in] with the stacked kernels.

  x [..., in], base_kernel [in, out], spline_kernel [in, G+k, out], grid [in, G+2k+1] -> [..., out] in
  x's dtype (bases evaluated in fp32). The backward is hand-written: it recomputes the features (for the
  kernels' gradient) and folds their analytic x-derivatives into the input gradient's reduction (no
  autodiff through Cox-de Boor, no stored derivative tensor); it stores nothing larger than
  [..., in, G+k+1]. The grid gets a zero gradient (it is state, moved by grid updates).

  >>> grid = uniform_grid(2, 5, 3)
  >>> kan_linear(jnp.zeros((4, 2)), jnp.ones((2, 3)), jnp.ones((2, 8, 3)), grid, 3).shape
  (4, 3)
  """
  return _kan_forward(x, base_kernel, spline_kernel, grid, order)


def _flat_features(x, grid, order):
  """[N, (G+k+1) * in] features of x [..., in] in x's dtype."""
  return kan_features(x, grid, order).astype(x.dtype).reshape(-1, (grid.shape[-1] - order) * x.shape[-1])


def _kan_forward(x, base_kernel, spline_kernel, grid, order):
  y = jnp.dot(_flat_features(x, grid, order), _kernel(base_kernel, spline_kernel, x.dtype))
  return y.reshape(*x.shape[:-1], y.shape[-1])


def _kan_fwd(x, base_kernel, spline_kernel, grid, order):
  return _kan_forward(x, base_kernel, spline_kernel, grid, order), (x, base_kernel, spline_kernel, grid)


def _input_gradient(dfeats: jax.Array, x: jax.Array, grid: jax.Array, order: int) -> jax.Array:
  """sum_c dfeats[..., c, i] dphi_c/dx_i: dfeats [N, G+k+1, in], x [N, in] -> [N, in] (fp32 at least).

  Written as a sum of per-feature products (not a reduce over the feature axis): XLA:CPU then makes it one
  elementwise pass over dfeats with the derivatives computed in registers, where a reduce is handed to a
  library fusion that first materialises every intermediate of the derivatives' size."""
  def accumulate(path, x, grid, dfeats):
    slopes = path(x, grid, order, True)  # [N, G+k, in], only ever read slice by slice inside this sum
    total = _silu_and_slope(x)[1] * dfeats[:, 0]
    for c in range(slopes.shape[1]):
      total = total + dfeats[:, c + 1] * slopes[:, c]
    return total

  return _by_grid(accumulate, x, grid, dfeats.astype(jnp.promote_types(x.dtype, jnp.float32)))


def _kan_bwd(order, residuals, dy):
  x, base_kernel, spline_kernel, grid = residuals
  n_in, n_out = base_kernel.shape
  x2 = x.reshape(-1, n_in)
  dy2 = dy.reshape(-1, n_out).astype(x.dtype)  # [N, out]
  flat = _flat_features(x2, grid, order)  # [N, (G+k+1) * in]
  dw = jnp.dot(flat.T, dy2, preferred_element_type=jnp.float32).reshape(-1, n_in, n_out)  # [G+k+1, in, out]
  dfeats = jnp.dot(dy2, _kernel(base_kernel, spline_kernel, x.dtype).T).reshape(x2.shape[0], -1, n_in)
  dx = _input_gradient(dfeats, x2, grid, order).reshape(x.shape)
  return (dx.astype(x.dtype), dw[0].astype(base_kernel.dtype), jnp.swapaxes(dw[1:], 0, 1).astype(spline_kernel.dtype),
          jnp.zeros_like(grid))


kan_linear.defvjp(_kan_fwd, _kan_bwd)


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


def chebyshev_features(x: jax.Array, degree: int) -> jax.Array:
  """T_0..T_degree(tanh x) (ChebyKAN's basis; tanh maps the input into [-1, 1] without clipping):
  x [..., in] -> [..., in, degree + 1], fp32 at least, by the recurrence T_{m+1} = 2 t T_m - T_{m-1}."""
  t = jnp.tanh(x.astype(jnp.promote_types(x.dtype, jnp.float32)))
  terms = [jnp.ones_like(t), t]
  for _ in range(degree - 1):
    terms.append(2 * t * terms[-1] - terms[-2])
  return jnp.stack(terms[: degree + 1], axis=-1)


def rbf_features(x: jax.Array, n: int, grid_range=(-2.0, 2.0)) -> jax.Array:
  """Gaussian bumps exp(-((x - c_m) / h)²) at n equally spaced centres c_m over grid_range, h their spacing
  (FastKAN's basis): x [..., in] -> [..., in, n], fp32 at least."""
  lo, hi = grid_range
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  centres = jnp.linspace(lo, hi, n, dtype=dtype)
  h = (hi - lo) / (n - 1)
  return jnp.exp(-jnp.square((x.astype(dtype)[..., None] - centres) / h))
