"""The rational activation op F(x) = P(x) / Q(x): full-range evaluation and a fused forward / backward.

P(x) = Σ_{i=0..m} a_i x^i and Q = q0 + h(S(v)), per denominator version (PAU; "rational activations"):
  A  (safe PAU)  v = |x|   S = Σ_{j=1..n} |b_j| v^j   h = identity   q0 = 1
  B, D           v = x     S = Σ_{j=1..n} b_j v^j     h = |.|        q0 = 1
  C              v = x     S = Σ_{j=0..n} b_j v^j     h = |.|        q0 = 0.1
  N  (unsafe)    v = x     S = Σ_{j=1..n} b_j v^j     h = identity   q0 = 1   (Q may vanish)

Range. Evaluated literally, P and Q overflow long before F does (x^5 at |x| = 1e8 in fp32, and then
inf / inf = NaN). Beyond T = 2^(96 / max(m, n)) (2^19 for degrees 5/4) the op factors the leading powers
out: with z = 1/x, dP the index of the highest non-zero a_i and d that of S's coefficients,
    P = x^dP P̃(z),   P̃(z) = Σ_k a_{dP-k} z^k   (-> a_dP as |x| -> inf)
    Q = |x|^d Q̃(z),  Q̃ = q0 |z|^d + h̃(S̃(z))   (-> |b_d|, or q0 when S = 0)
    F = sign(x)^dP |x|^(dP-d) P̃ / Q̃
so every factor but the exact power |x|^(dP-d) is O(1); the derivatives are factored the same way.
Hence F, dF/dx and every coefficient partial are finite whenever their exact value is representable in
the compute dtype (fp32 at least), and overflow to ±inf (underflow to 0) only when the exact value does.
±inf inputs give the limits x -> ±inf of F and of its partials (e.g. F(±inf) = ±inf and F'(±inf) =
a_5 / |b_4| for version A 5/4). An element whose cotangent is 0 contributes exactly 0 to every gradient
(an inf or NaN masked out of the loss poisons nothing). A NaN input with a non-zero cotangent makes its
output, its input gradient and the gradients of the coefficients it uses NaN (its partials are
undefined) and nothing else: other elements' input gradients and other groups' coefficients stay clean.

Speed. The backward is hand-written (`jax.custom_vjp`): it keeps only (x, a, b) and recomputes P, Q and
their derivatives by Horner's rule; no powers or other [..., m+n] tensors are stored. Coefficient
gradients are power sums Σ w x^i, one reduction each. On CPU the op runs over blocks of rows that stay in
cache (a reduction per coefficient over the whole array would re-read it from memory m+n times), each
block on the plain formula unless one of its elements lies beyond T. Elsewhere (GPU, TPU: extra
arithmetic is free next to memory traffic, and XLA fuses sibling reductions) the whole array runs on the
full-range form in one pass.
"""

import functools
import math

import jax
import jax.numpy as jnp

VERSIONS = ("A", "B", "C", "D", "N")
_CPU_BLOCK = 32768  # elements per CPU block: the block's handful of temporaries stay in L2


def check_version(version: str) -> None:
  if version not in VERSIONS:
    raise ValueError(f"unknown rational version {version!r}; versions are {VERSIONS}")


def denominator_size(version: str, degree: int) -> int:
  """Number of denominator coefficients for a degree-n denominator (version C also has b_0)."""
  check_version(version)
  return degree + 1 if version == "C" else degree


def horner(coeffs: jax.Array, x: jax.Array) -> jax.Array:
  """Σ_i coeffs[i] x^i; coeffs [k, *S] with S broadcasting against x (k >= 1)."""
  acc = coeffs[-1]
  if coeffs.shape[0] == 1:
    return jnp.broadcast_to(acc, jnp.broadcast_shapes(acc.shape, x.shape))
  for i in range(coeffs.shape[0] - 2, -1, -1):
    acc = acc * x + coeffs[i]
  return acc


def horner_with_derivative(coeffs: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Σ_i c_i x^i, Σ_i i c_i x^(i-1)) in one pass; coeffs [k, *S], k >= 1."""
  p, dp = coeffs[-1] * jnp.ones_like(x), jnp.zeros_like(x)
  for i in range(coeffs.shape[0] - 2, -1, -1):
    dp = dp * x + p
    p = p * x + coeffs[i]
  return p, dp


def _denominator_poly(b: jax.Array, version: str) -> tuple[jax.Array, float]:
  """(β, q0): S's coefficients in ascending powers of v with β_0 included ([n+1, *S]), and Q's constant."""
  if version == "C":
    return b, 0.1
  beta = jnp.abs(b) if version == "A" else b
  return jnp.concatenate([jnp.zeros_like(beta[:1]), beta]), 1.0


def rational_value(x: jax.Array, a: jax.Array, b: jax.Array, version: str) -> jax.Array:
  """P(x) / Q(x) evaluated literally: the specification (and autodiff reference) for moderate |x|.

  x, a, b in the evaluation dtype; a [m+1, *S], b [n(+1), *S] with S broadcasting against x.
  """
  beta, q0 = _denominator_poly(b, version)
  s = horner(beta, jnp.abs(x) if version == "A" else x)
  return horner(a, x) / (q0 + (jnp.abs(s) if version in "BCD" else s))


def threshold(m: int, n: int) -> float:
  """T: beyond it the literal formula could overflow for the degrees (m, n); 2^(96 / max(m, n))."""
  return 2.0 ** (96 // max(m, n, 1))


# ----------------------------------------------------------------------------------------------------------
# Per-element pieces: the literal formula (|x| <= T) and the factored one (beyond T, ±inf, NaN).


def _near(x, a, beta, q0, version):
  """Literal formula (valid for |x| <= T): F, dF/dx, 1/Q, h'(S) and v."""
  p, dp = horner_with_derivative(a, x)
  v = jnp.abs(x) if version == "A" else x
  s, ds = horner_with_derivative(beta, v)
  if version in "BCD":
    hs = jnp.where(s >= 0, 1.0, -1.0).astype(x.dtype)  # d|S|/dS, +1 at S = 0 so a zero denominator can learn
    dq = hs * ds
  else:
    hs = jnp.ones_like(s)
    dq = jnp.sign(x) * ds if version == "A" else ds
  inv_q = 1.0 / (q0 + hs * s)
  f = p * inv_q
  return f, (dp - f * dq) * inv_q, inv_q, hs, v


def _degree(c: jax.Array) -> jax.Array:
  """Index of the highest non-zero coefficient (0 if none), per coefficient vector: c [k, *S] -> S int32."""
  idx = jnp.arange(c.shape[0], dtype=jnp.int32).reshape(-1, *([1] * (c.ndim - 1)))
  return jnp.max(jnp.where(c != 0, idx, 0), axis=0)


def _leading_first(c: jax.Array, deg: jax.Array) -> jax.Array:
  """c̃_k = c_{deg-k} (0 for k > deg): the coefficients of x^-deg P(x) as a polynomial in 1/x."""
  idx = deg[None] - jnp.arange(c.shape[0], dtype=jnp.int32).reshape(-1, *([1] * (c.ndim - 1)))
  return jnp.where(idx >= 0, jnp.take_along_axis(c, jnp.maximum(idx, 0), axis=0), 0.0)


def _sign_pow(s: jax.Array, k) -> jax.Array:
  """s^k for s = ±1 and integer k (any sign)."""
  return jnp.where((k & 1) == 1, s, 1.0).astype(s.dtype)


def _ipow(w: jax.Array, big: jax.Array, k, lo: int, hi: int) -> jax.Array:
  """w·|x|^k for an integer k in [lo, hi] from big = |x| > 1, one factor at a time (multiplying for k > 0,
  dividing for k < 0): every partial result lies between w and the result and no factor is a power of |x|
  or its reciprocal, so nothing overflows, underflows or goes subnormal (CPUs flush those to zero) unless
  the result does."""
  r = w * jnp.ones_like(big)
  for i in range(max(hi, 0)):
    r = jnp.where(k > i, r * big, r)
  for i in range(max(-lo, 0)):
    r = jnp.where(k < -i, r / big, r)
  return r


class _Far:
  """Factored formula for |x| > T (and ±inf, NaN): F and its partials as O(1) factors times exact powers."""

  def __init__(self, x, a, beta, q0, version):
    self.m, self.n = a.shape[0] - 1, beta.shape[0] - 1
    self.version = version
    self.dp, self.d = _degree(a), _degree(beta)  # dP in [0, m], d in [0, n]
    self.big = jnp.abs(x)
    self.s = jnp.where(x < 0, -1.0, 1.0).astype(x.dtype)
    z = 1.0 / x
    w = 1.0 / self.big if version == "A" else z
    pt, dpt = horner_with_derivative(_leading_first(a, self.dp), z)
    st, dst = horner_with_derivative(_leading_first(beta, self.d), w)
    if version in "BCD":
      self.sg = jnp.where(st >= 0, 1.0, -1.0).astype(x.dtype)
      ht, sigma = self.sg * st, self.sg
    elif version == "N":
      sigma = _sign_pow(self.s, self.d)
      ht = sigma * st
    else:
      ht, sigma = st, 1.0
    m, n = self.m, self.n
    self.inv_qt = 1.0 / (self.pow(q0, -self.d, -n, 0) + ht)
    self.r = pt * self.inv_qt
    self.f = self.pow(_sign_pow(self.s, self.dp) * self.r, self.dp - self.d, -n, m)
    dp_hat, ds_hat = self.dp * pt - z * dpt, self.d * st - w * dst  # x^(1-dP) P'(x), v^(1-d) S'(v)
    self.df = self.pow(_sign_pow(self.s, self.dp - 1) * self.inv_qt * (dp_hat - sigma * self.r * ds_hat),
                       self.dp - self.d - 1, -n - 1, m - 1)

  def pow(self, w, k, lo: int, hi: int):
    """w·|x|^k, k in [lo, hi]."""
    return _ipow(w, self.big, k, lo, hi)

  def numerator_partial(self, g, i: int):
    """g·dF/da_i = g·x^i / Q."""
    return self.pow(g * _sign_pow(self.s, i) * self.inv_qt, i - self.d, i - self.n, i)

  def denominator_partial(self, g, j: int):
    """g·dF/dβ_j = -g·F / Q · h'(S) · v^j."""
    w = -g * self.r * self.inv_qt * _sign_pow(self.s, self.dp)
    if self.version in "BCD":
      w = w * _sign_pow(self.s, self.d + j) * self.sg
    elif self.version == "N":
      w = w * _sign_pow(self.s, j)
    return self.pow(w, self.dp - 2 * self.d + j, j - 2 * self.n, self.m + j)


# ----------------------------------------------------------------------------------------------------------
# Forward and backward of one block (or of the whole array), literal ("fast") or full-range.


def _sum_to(t: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sum t [..., *shape'] down to `shape` (the coefficient's broadcast shape S), leading axes first
  (a column-wise reduction vectorises on CPU)."""
  t = jnp.sum(t, axis=tuple(range(t.ndim - max(len(shape), 1))))
  if not shape:
    return jnp.sum(t)
  return jnp.sum(t, axis=tuple(i for i, k in enumerate(shape) if k == 1), keepdims=True)


def _power_sums(w: jax.Array, u: jax.Array, start: int, k: int, shape: tuple[int, ...]) -> jax.Array:
  """[Σ w u^start, ..., Σ w u^(start+k-1)] reduced to `shape`: k reductions of one running product."""
  t = w * u if start else w
  sums = []
  for _ in range(k):
    sums.append(_sum_to(t, shape))
    t = t * u
  return jnp.stack(sums)


def _forward(x, a, b, version, full_range: bool):
  beta, q0 = _denominator_poly(b, version)
  f = _near(x, a, beta, q0, version)[0]
  if not full_range:
    return f
  far = ~(jnp.abs(x) <= threshold(a.shape[0] - 1, beta.shape[0] - 1))  # NaN and ±inf included
  return jnp.where(far, _Far(jnp.where(far, x, 1.0), a, beta, q0, version).f, f)


def _backward(x, g, a, b, version, full_range: bool):
  """(dL/dx, dL/da, dL/db) for cotangent g; coefficient gradients reduced to a's and b's shapes."""
  beta, q0 = _denominator_poly(b, version)
  m1, n1 = a.shape[0], beta.shape[0]
  j0 = 0 if version == "C" else 1  # β_0 is a coefficient only in version C
  f, df, inv_q, hs, v = _near(x, a, beta, q0, version)
  wa, wb = g * inv_q, -g * f * inv_q * hs
  if not full_range:
    grad_a = _power_sums(wa, x, 0, m1, a.shape[1:])
    grad_b = _power_sums(wb, v, j0, n1 - j0, b.shape[1:])
    return g * df, grad_a, grad_b
  far = ~(jnp.abs(x) <= threshold(m1 - 1, n1 - 1))
  fr = _Far(jnp.where(far, x, 1.0), a, beta, q0, version)
  live = g != 0  # a zero cotangent contributes exactly zero, whatever the partial (inf, NaN)

  def pick(far_term, near_term):
    return jnp.where(live, jnp.where(far, far_term, near_term), 0.0)

  near_a = [wa]
  for _ in range(1, m1):
    near_a.append(near_a[-1] * x)
  near_b = [wb * v if j0 else wb]
  for _ in range(j0 + 1, n1):
    near_b.append(near_b[-1] * v)
  # One stacked reduction per coefficient vector: the far chain is written once, not once per coefficient.
  terms_a = jnp.stack([pick(fr.numerator_partial(g, i), t) for i, t in enumerate(near_a)])
  terms_b = jnp.stack([pick(fr.denominator_partial(g, j), t) for j, t in enumerate(near_b, j0)])
  sum_to = lambda t, shape: jax.vmap(lambda u: _sum_to(u, shape))(t)  # noqa: E731
  return pick(g * fr.df, g * df), sum_to(terms_a, a.shape[1:]), sum_to(terms_b, b.shape[1:])


# ----------------------------------------------------------------------------------------------------------
# Drivers: the whole array in one pass (GPU / TPU), or blocks of rows (CPU).


def _cpu_blocks(fn, x: jax.Array, g: jax.Array | None, sums: tuple, trailing: int, limit: float):
  """Apply fn(x_block, g_block, full_range) -> (out_block, block_sums) over blocks of rows of x, each block
  on the literal formula unless one of its elements is beyond `limit`; returns (out, sums + Σ block_sums)."""
  shape = x.shape
  x = x.reshape(-1, *shape[x.ndim - trailing:])
  g = None if g is None else g.reshape(x.shape)
  rows = x.shape[0]
  rb = _block_rows(rows, math.prod(x.shape[1:]))

  def block(start, size):
    xb = jax.lax.dynamic_slice_in_dim(x, start, size)
    gb = None if g is None else jax.lax.dynamic_slice_in_dim(g, start, size)
    far = jnp.any(~(jnp.abs(xb) <= limit))
    return jax.lax.cond(far, functools.partial(fn, full_range=True), functools.partial(fn, full_range=False),
                        xb, gb)

  def body(i, carry):
    out, acc = carry
    ob, sb = block(i * rb, rb)
    return jax.lax.dynamic_update_slice_in_dim(out, ob, i * rb, 0), jax.tree.map(jnp.add, acc, sb)

  out, sums = jax.lax.fori_loop(0, rows // rb, body, (jnp.zeros_like(x), sums))
  if rows % rb:
    tail, tail_sums = block(rows - rows % rb, rows % rb)
    out = jax.lax.dynamic_update_slice_in_dim(out, tail, rows - rows % rb, 0)
    sums = jax.tree.map(jnp.add, sums, tail_sums)
  return out.reshape(shape), sums


def _block_rows(rows: int, row_size: int) -> int:
  """Rows per CPU block: about _CPU_BLOCK elements, a divisor of `rows` when one is near (no tail block)."""
  target = max(1, min(rows, _CPU_BLOCK // max(row_size, 1)))
  for rb in range(target, max(target // 2, 1) - 1, -1):
    if rows % rb == 0:
      return rb
  return target


def _trailing(x: jax.Array, *coeffs: jax.Array) -> int:
  """How many trailing axes of x the coefficient shapes S broadcast against (at least 1)."""
  return max(1, *(c.ndim - 1 for c in coeffs))


def _limit(a: jax.Array, b: jax.Array, version: str) -> float:
  return threshold(a.shape[0] - 1, b.shape[0] - (1 if version == "C" else 0))


def _forward_any(x, a, b, version):
  def cpu(x, a, b):
    fn = lambda xb, gb, full_range: (_forward(xb, a, b, version, full_range), ())  # noqa: E731
    return _cpu_blocks(fn, x, None, (), _trailing(x, a, b), _limit(a, b, version))[0]

  return jax.lax.platform_dependent(x, a, b, cpu=cpu,
                                    default=lambda x, a, b: _forward(x, a, b, version, full_range=True))


def _backward_any(x, g, a, b, version):
  def cpu(x, g, a, b):
    def fn(xb, gb, full_range):
      dx, ga, gb_ = _backward(xb, gb, a, b, version, full_range)
      return dx, (ga, gb_)

    zeros = (jnp.zeros(a.shape, x.dtype), jnp.zeros(b.shape, x.dtype))
    dx, (ga, gb) = _cpu_blocks(fn, x, g, zeros, _trailing(x, a, b), _limit(a, b, version))
    return dx, ga, gb

  return jax.lax.platform_dependent(x, g, a, b, cpu=cpu,
                                    default=lambda x, g, a, b: _backward(x, g, a, b, version, full_range=True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fused_rational(x: jax.Array, a: jax.Array, b: jax.Array, version: str) -> jax.Array:
  """P(x) / Q(x) over the full range, with the fused backward (see the module docstring).

  x [...] in the evaluation dtype; a [m+1, *S], b [n, *S] ([n+1, *S] for version C) in the same dtype,
  S broadcasting against x's trailing axes (S = () for one rational, (G, 1) for G channel groups of
  x [..., G, D/G]). Returns F(x) [...]. Differentiable in reverse mode (also reverse-over-reverse);
  forward mode (`jax.jvp`) is not defined for a custom_vjp.

  >>> a, b = jnp.array([0., 1., 0.]), jnp.array([0., 1.])   # x / (1 + x^2)
  >>> fused_rational(jnp.array([1e30, 2.0]), a, b, "A")      # doctest: +SKIP
  Array([1.e-30, 4.e-01], dtype=float32)
  """
  return _forward_any(x, a, b, version)


def _fused_fwd(x, a, b, version):
  return _forward_any(x, a, b, version), (x, a, b)


def _fused_bwd(version, residuals, g):
  x, a, b = residuals
  grad_x, grad_a, grad_b = _backward_any(x, g, a, b, version)
  if version == "A":
    grad_b = grad_b * jnp.where(b >= 0, 1.0, -1.0)  # d|b|/db, taken as +1 at b = 0 so zero-init can learn
  return grad_x, grad_a.reshape(a.shape), grad_b.reshape(b.shape)


fused_rational.defvjp(_fused_fwd, _fused_bwd)
