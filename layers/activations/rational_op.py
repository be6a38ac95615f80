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

Speed. The backward is hand-written (`jax.custom_vjp`): it keeps (x, a, b) and the output F, and recomputes
Q and the derivatives by Horner's rule; no powers or other [..., m+n] tensors are stored. Coefficient
gradients are power sums Σ w x^i. On CPU, when some |x| > T (rare: such inputs mean training has already
diverged) the whole array runs on the full-range form; otherwise the literal formula, as C++ kernels
(`rational_cpu`, fp32: one pass computes F and whether any |x| > T, one pass over (x, g, F) writes dL/dx and
sums every coefficient's terms) or, where none is built (fp64, no compiler), in XLA: one max over |x|, and a
backward of two passes over (x, g, F), one for dL/dx and one variadic reduce for all m+n power sums (XLA:CPU
emits one pass over the data per ordinary reduction, and does not vectorise a variadic one). Both sum runs of
at most 256 elements in fp32 and add the runs' sums, so fp32 rounding stays that of a 256-term sum.
Elsewhere (GPU, TPU: extra arithmetic is free next to memory traffic, and XLA fuses sibling reductions) the
whole array runs on the full-range form in one pass.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from layers.activations import rational_cpu

VERSIONS = ("A", "B", "C", "D", "N")
_BLOCK = 32768  # elements per block of the CPU full-range backward: its temporaries stay in L2
_RUN = 256  # elements per partial sum of a coefficient gradient on CPU (fp32 rounding grows with it)


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


def _denominator(x, beta, q0, version):
  """Q at x by the literal formula and its pieces: (Q, dQ/dx, h'(S), v)."""
  v = jnp.abs(x) if version == "A" else x
  s, ds = horner_with_derivative(beta, v)
  if version in "BCD":
    hs = jnp.where(s >= 0, 1.0, -1.0).astype(x.dtype)  # d|S|/dS, +1 at S = 0 so a zero denominator can learn
    dq = hs * ds
  else:
    hs = jnp.ones_like(s)
    dq = jnp.sign(x) * ds if version == "A" else ds
  return q0 + hs * s, dq, hs, v


def _near(x, a, beta, q0, version):
  """Literal formula (valid for |x| <= T): F, dF/dx, 1/Q, h'(S) and v."""
  p, dp = horner_with_derivative(a, x)
  q, dq, hs, v = _denominator(x, beta, q0, version)
  inv_q = 1.0 / q
  f = p * inv_q
  return f, (dp - f * dq) * inv_q, inv_q, hs, v


def _powers(w: jax.Array, u: jax.Array, k: int) -> list[jax.Array]:
  """[w, w u, ..., w u^(k-1)]: the per-element terms of k consecutive coefficients' gradients."""
  terms = [w]
  for _ in range(1, k):
    terms.append(terms[-1] * u)
  return terms


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
# Coefficient gradients: power sums Σ w x^i over the elements, all in one pass.


def _sum_to(t: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sum t [..., *shape'] down to `shape` (a coefficient's shape S), leading axes first."""
  t = jnp.sum(t, axis=tuple(range(t.ndim - max(len(shape), 1))))
  if not shape:
    return jnp.sum(t)
  return jnp.sum(t, axis=tuple(i for i, k in enumerate(shape) if k == 1), keepdims=True)


def _sum_layout(x_shape: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
  """How to sum a [x_shape] term down to the coefficient shape S = `shape` in runs of <= _RUN elements:
  (P, R, C, j) for the view [P, R // C, C] (P = the axes up to the last one S keeps, j of them; C the run),
  or None when no run of at least _RUN // 8 divides the summed trailing size R and R exceeds _RUN * 16
  (one chain that long would lose fp32 accuracy)."""
  s = (1,) * (len(x_shape) - len(shape)) + tuple(shape)
  j = max((i + 1 for i, k in enumerate(s) if k != 1), default=0)
  rest = math.prod(x_shape[j:])
  run = next((c for c in (_RUN, _RUN // 2, _RUN // 4, _RUN // 8) if rest % c == 0), None)
  if run is None:
    if rest > _RUN * 16:
      return None
    run = max(rest, 1)
  return math.prod(x_shape[:j]), rest, run, j


def _coefficient_sums(terms: list[jax.Array], a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(dL/da, dL/db) from the per-element terms of every coefficient (a's first, each shaped like x), reduced
  to a's and b's shapes. The terms are summed in one variadic reduce, which reads their inputs once (each
  ordinary reduction is a pass over the data on XLA:CPU, and stacking them materialises them all), over runs
  of _RUN elements whose sums are then added, so no fp32 chain is longer than a run; a size that no run
  length divides is summed one reduction per term."""
  x_shape = terms[0].shape
  layout = _sum_layout(x_shape, jnp.broadcast_shapes(a.shape[1:], b.shape[1:]))
  if layout is not None:
    p, rest, run, j = layout
    sums = _variadic_sum(tuple(t.reshape(p, rest // run, run) for t in terms))  # each [P, R // C]
    tail = (rest // run, *([1] * (len(x_shape) - j - 1))) if j < len(x_shape) else ()  # sums replace axes j..
    terms = [u.reshape(*x_shape[:j], *tail) for u in sums]
  return _split_sums(terms, a, b)


def _split_sums(terms, a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(dL/da, dL/db) from per-coefficient partial sums (a's first), each summed down to its coefficient's shape."""
  m1 = a.shape[0]
  return (jnp.stack([_sum_to(t, a.shape[1:]) for t in terms[:m1]]),
          jnp.stack([_sum_to(t, b.shape[1:]) for t in terms[m1:]]))


@jax.custom_jvp
def _variadic_sum(views: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  """Σ over the last axis of every view, in one loop over the data."""
  zeros = tuple(jnp.zeros((), v.dtype) for v in views)
  return jax.lax.reduce(views, zeros, lambda u, w: tuple(p + q for p, q in zip(u, w)), (2,))


@_variadic_sum.defjvp
def _variadic_sum_jvp(primals, tangents):
  # The sum is linear: its tangent is the sum of the tangents, written with reduce_sum (which, unlike a
  # variadic reduce, JAX can transpose) so that the backward stays differentiable.
  return _variadic_sum(*primals), tuple(jnp.sum(t, axis=2) for t in tangents[0])


# ----------------------------------------------------------------------------------------------------------
# Forward and backward: the full-range form (any platform) and the literal one (CPU, every |x| <= T).


def _forward(x, a, b, version, full_range: bool):
  beta, q0 = _denominator_poly(b, version)
  f = _near(x, a, beta, q0, version)[0]
  if not full_range:
    return f
  far = ~(jnp.abs(x) <= threshold(a.shape[0] - 1, beta.shape[0] - 1))  # NaN and ±inf included
  return jnp.where(far, _Far(jnp.where(far, x, 1.0), a, beta, q0, version).f, f)


def _backward(x, g, a, b, version):
  """(dL/dx, dL/da, dL/db) for cotangent g over the full range; coefficient gradients reduced to a's and b's
  shapes."""
  beta, q0 = _denominator_poly(b, version)
  m1, n1 = a.shape[0], beta.shape[0]
  j0 = 0 if version == "C" else 1  # β_0 is a coefficient only in version C
  f, df, inv_q, hs, v = _near(x, a, beta, q0, version)
  wa, wb = g * inv_q, -g * f * inv_q * hs
  far = ~(jnp.abs(x) <= threshold(m1 - 1, n1 - 1))
  fr = _Far(jnp.where(far, x, 1.0), a, beta, q0, version)
  live = g != 0  # a zero cotangent contributes exactly zero, whatever the partial (inf, NaN)

  def pick(far_term, near_term):
    return jnp.where(live, jnp.where(far, far_term, near_term), 0.0)

  terms = [pick(fr.numerator_partial(g, i), t) for i, t in enumerate(_powers(wa, x, m1))]
  terms += [pick(fr.denominator_partial(g, j), t) for j, t in enumerate(_powers(wb * v if j0 else wb, v, n1 - j0), j0)]
  return (pick(g * fr.df, g * df), *_coefficient_sums(terms, a, b))


def _backward_literal(x, g, f, a, b, version):
  """(dL/dx, dL/da, dL/db) by the literal formula, given the forward's output f; every |x| <= T. Two passes
  over (x, g, f): dL/dx, and every coefficient gradient in one reduce. Each divides by Q itself: a shared
  1/Q would be a third pass (XLA materialises a divide that two loops use)."""
  beta, q0 = _denominator_poly(b, version)
  j0 = 0 if version == "C" else 1
  dp = horner_with_derivative(a, x)[1]
  q, dq, hs, v = _denominator(x, beta, q0, version)
  wa = g / q
  wb = -wa * f * hs
  terms = _powers(wa, x, a.shape[0]) + _powers(wb * v if j0 else wb, v, beta.shape[0] - j0)
  return (g * (dp - f * dq) / q, *_coefficient_sums(terms, a, b))


# ----------------------------------------------------------------------------------------------------------
# The literal form as XLA:CPU kernels (`rational_cpu`): one vectorised pass each way. Differentiable through
# the XLA literal form, which defines their derivatives (reverse-over-reverse).


def _use_kernel(x: jax.Array, a: jax.Array, b: jax.Array, version: str) -> bool:
  """Whether the CPU kernels serve these (static) shapes: fp32, coefficients that give each element one group,
  degrees below 32, and kernels enabled and built (`rational_cpu.enabled`)."""
  return (x.dtype == jnp.float32 and max(a.shape[0], b.shape[0] + 1) <= 32
          and rational_cpu.group_layout(x.shape, _coefficient_shape(a, b)) is not None and rational_cpu.enabled())


def _coefficient_shape(a: jax.Array, b: jax.Array) -> tuple[int, ...]:
  return jnp.broadcast_shapes(a.shape[1:], b.shape[1:])


def _kernel_args(x, a, b, version):
  """The kernels' coefficients ([m+1, G], [n+1, G]) and attributes."""
  beta, q0 = _denominator_poly(b, version)
  s = _coefficient_shape(a, b)
  flat = lambda c: jnp.broadcast_to(c, (c.shape[0], *s)).reshape(c.shape[0], -1)  # noqa: E731
  inner = rational_cpu.group_layout(x.shape, s)[1]
  return flat(a), flat(beta), dict(inner=inner, abs_v=version == "A", abs_h=version in "BCD", q0=q0,
                                   j0=0 if version == "C" else 1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _forward_kernel(x, a, b, version):
  """(F by the literal formula, whether some |x| > T): `_forward(..., full_range=False)` in one pass."""
  ak, bk, attrs = _kernel_args(x, a, b, version)
  return rational_cpu.forward(x, ak, bk, **attrs, limit=_limit(a, b, version))


@_forward_kernel.defjvp
def _forward_kernel_jvp(version, primals, tangents):
  tangent = jax.jvp(lambda x, a, b: _forward(x, a, b, version, False), primals, tangents)[1]
  return _forward_kernel(*primals, version), (tangent, np.zeros((), jax.dtypes.float0))


@functools.partial(jax.custom_jvp, nondiff_argnums=(5,))
def _backward_kernel(x, g, f, a, b, version):
  """`_backward_literal` in one pass over (x, g, f)."""
  ak, bk, attrs = _kernel_args(x, a, b, version)
  dx, sums = rational_cpu.backward(x, g, f, ak, bk, **attrs)
  return (dx, *_split_sums(sums.reshape(-1, *_coefficient_shape(a, b)), a, b))


@_backward_kernel.defjvp
def _backward_kernel_jvp(version, primals, tangents):
  tangent = jax.jvp(lambda *args: _backward_literal(*args, version), primals, tangents)[1]
  return _backward_kernel(*primals, version), tangent


# ----------------------------------------------------------------------------------------------------------
# Drivers. CPU: the literal form (kernels, or XLA after a max pass) unless some |x| > T. Elsewhere: the
# full-range form in one pass.


def _far(x: jax.Array, a: jax.Array, b: jax.Array, version: str) -> jax.Array:
  """Whether some element of x lies beyond T (±inf and NaN included: the max propagates NaN)."""
  if x.size == 0:
    return jnp.zeros((), bool)
  return ~(jnp.max(jnp.abs(jax.lax.stop_gradient(x))) <= _limit(a, b, version))


def _limit(a: jax.Array, b: jax.Array, version: str) -> float:
  return threshold(a.shape[0] - 1, b.shape[0] - (1 if version == "C" else 0))


def _forward_any(x, a, b, version):
  """(F, far): on CPU the literal formula unless some |x| > T; elsewhere the full-range form in one pass."""
  def cpu(x, a, b):
    if _use_kernel(x, a, b, version):
      f, far = _forward_kernel(x, a, b, version)
      return jax.lax.cond(far, lambda x: _forward(x, a, b, version, True), lambda x: f, x), far
    far = _far(x, a, b, version)
    f = jax.lax.cond(far, lambda x: _forward(x, a, b, version, True), lambda x: _forward(x, a, b, version, False),
                     x)
    return f, far

  return jax.lax.platform_dependent(
      x, a, b, cpu=cpu, default=lambda x, a, b: (_forward(x, a, b, version, True), jnp.zeros((), bool)))


def _backward_in_blocks(x, g, a, b, version):
  """The full-range backward over blocks of about _BLOCK elements (rows of the axes the coefficients broadcast
  against), one after another: its per-element temporaries stay the size of a block, not of x."""
  trailing = x.shape[max(0, x.ndim - max(1, a.ndim - 1, b.ndim - 1)):]
  rows = x.reshape(-1, *trailing)
  per_row = lambda xg: _backward(*xg, a, b, version)  # noqa: E731
  dx, grad_a, grad_b = jax.lax.map(per_row, (rows, g.reshape(rows.shape)),
                                   batch_size=max(1, _BLOCK // max(math.prod(trailing), 1)))
  return dx.reshape(x.shape), grad_a.sum(0), grad_b.sum(0)


def _backward_any(x, g, f, far, a, b, version):
  def cpu(x, g, f, a, b):
    literal = _backward_kernel if _use_kernel(x, a, b, version) else _backward_literal
    return jax.lax.cond(far, lambda x, g, f, a, b: _backward_in_blocks(x, g, a, b, version),
                        lambda *args: literal(*args, version), x, g, f, a, b)

  def full(x, g, f, a, b):
    return _backward(x, g, a, b, version)

  return jax.lax.platform_dependent(x, g, f, a, b, cpu=cpu, default=full)


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
  return _forward_any(x, a, b, version)[0]


def _fused_fwd(x, a, b, version):
  f, far = _forward_any(x, a, b, version)
  return f, (x, a, b, f, far)


def _fused_bwd(version, residuals, g):
  x, a, b, f, far = residuals
  grad_x, grad_a, grad_b = _backward_any(x, g, f, far, a, b, version)
  if version == "A":
    grad_b = grad_b * jnp.where(b >= 0, 1.0, -1.0)  # d|b|/db, taken as +1 at b = 0 so zero-init can learn
  return grad_x, grad_a.reshape(a.shape), grad_b.reshape(b.shape)


fused_rational.defvjp(_fused_fwd, _fused_bwd)
