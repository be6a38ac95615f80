"""Learnable activations as pure functions: rational (PAU), group rational (KAT), PolyCom, Swish-β.

Every function evaluates in fp32 (fp64 for fp64 inputs) whatever the input dtype, polynomials by
Horner's rule, and returns the input dtype. Coefficient order is ascending: numerator a_0..a_m, denominator
b_1..b_n (version C: b_0..b_n).

Rational denominators Q(x) (PAU and its "rational activations" successor):
  A  (safe PAU, default)  Q = 1 + Σ_{j=1..n} |b_j| |x|^j
  B                       Q = 1 + |Σ_{j=1..n} b_j x^j|
  C                       Q = 0.1 + |Σ_{j=0..n} b_j x^j|
  D                       B, numerator coefficients times U[1-noise, 1+noise] noise in training
  N  (unsafe)             Q = 1 + Σ_{j=1..n} b_j x^j      (may vanish: only for comparison)
"""

import functools

import jax
import jax.numpy as jnp

VERSIONS = ("A", "B", "C", "D", "N")


def check_version(version: str) -> None:
  if version not in VERSIONS:
    raise ValueError(f"unknown rational version {version!r}; versions are {VERSIONS}")


def denominator_size(version: str, degree: int) -> int:
  """Number of denominator coefficients for a degree-n denominator (version C also has b_0)."""
  check_version(version)
  return degree + 1 if version == "C" else degree


def _f32(x: jax.Array) -> jnp.dtype:
  """The evaluation dtype: at least fp32 (bf16 / fp16 inputs are upcast)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def horner(coeffs: jax.Array, x: jax.Array) -> jax.Array:
  """Σ_i coeffs[i] x^i; coeffs [k, *S] with S broadcasting against x (k >= 1)."""
  acc = coeffs[-1]
  if coeffs.shape[0] == 1:
    return jnp.broadcast_to(acc, jnp.broadcast_shapes(acc.shape, x.shape))
  for i in range(coeffs.shape[0] - 2, -1, -1):
    acc = acc * x + coeffs[i]
  return acc


def _horner_with_derivative(coeffs: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Σ_i c_i x^i, Σ_i i c_i x^(i-1)) in one pass; coeffs [k, *S], k >= 1."""
  p, dp = coeffs[-1] * jnp.ones_like(x), jnp.zeros_like(x)
  for i in range(coeffs.shape[0] - 2, -1, -1):
    dp = dp * x + p
    p = p * x + coeffs[i]
  return p, dp


def _denominator(x: jax.Array, b: jax.Array, version: str) -> jax.Array:
  """Q(x) for the given version; b as `horner` expects ([n] or [n, *S])."""
  if version == "A":
    ax = jnp.abs(x)
    return 1.0 + ax * horner(jnp.abs(b), ax)
  if version in ("B", "D"):
    return 1.0 + jnp.abs(x * horner(b, x))
  if version == "C":
    return 0.1 + jnp.abs(horner(b, x))
  return 1.0 + x * horner(b, x)


def rational_value(x: jax.Array, a: jax.Array, b: jax.Array, version: str) -> jax.Array:
  """P(x) / Q(x), differentiated by plain autodiff: the specification `_rational_fused` must match.

  x, a, b already in the evaluation dtype; a [m+1, *S], b [n(+1), *S] with S broadcasting against x.
  """
  return horner(a, x) / _denominator(x, b, version)


def _sum_to(t: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sum t [..., *shape'] down to `shape` (the coefficient's broadcast shape S). The long leading
  axes go first (a column-wise reduction vectorises on CPU; a flat one is ~3x slower)."""
  t = jnp.sum(t, axis=tuple(range(t.ndim - max(len(shape), 1))))
  if not shape:
    return jnp.sum(t)
  return jnp.sum(t, axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True)


def _power_sums(w: jax.Array, u: jax.Array, start: int, k: int, shape: tuple[int, ...]) -> jax.Array:
  """[Σ w u^start, ..., Σ w u^(start+k-1)] reduced to `shape`: k separate reductions of one running
  product (XLA fuses each; stacking them first is an order of magnitude slower on CPU)."""
  t = w * u if start else w
  sums = []
  for _ in range(k):
    sums.append(_sum_to(t, shape))
    t = t * u
  return jnp.stack(sums)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _rational_fused(x: jax.Array, a: jax.Array, b: jax.Array, version: str) -> jax.Array:
  """`rational_value` with a hand-written backward that keeps only (x, a, b) and recomputes the rest.

  Autodiff of Horner's rule saves every intermediate and turns each coefficient gradient into a
  reduction over a re-derived chain (~50x the forward cost on CPU); this backward is ~3 forwards.
  """
  return rational_value(x, a, b, version)


def _rational_fwd(x, a, b, version):
  return rational_value(x, a, b, version), (x, a, b)


def _rational_bwd(version, residuals, g):
  x, a, b = residuals
  p, dp = _horner_with_derivative(a, x)
  # Q = q0 + |S(u)| (or q0 + S(u) for N); its coefficient basis is u^j, j from `start`.
  if version == "A":
    u, start = jnp.abs(x), 1
    s, ds = _horner_with_derivative(jnp.concatenate([jnp.zeros_like(b[:1]), jnp.abs(b)]), u)
    q, dq, elem_sign = 1.0 + s, jnp.sign(x) * ds, None
  elif version == "N":
    u, start = x, 1
    s, ds = _horner_with_derivative(jnp.concatenate([jnp.zeros_like(b[:1]), b]), x)
    q, dq, elem_sign = 1.0 + s, ds, None
  else:
    u, start = x, 0 if version == "C" else 1
    coeffs = b if version == "C" else jnp.concatenate([jnp.zeros_like(b[:1]), b])
    s, ds = _horner_with_derivative(coeffs, x)
    elem_sign = jnp.where(s >= 0, 1.0, -1.0)  # d|S|/dS, +1 at S = 0 so an all-zero denominator can learn
    q, dq = (0.1 if version == "C" else 1.0) + jnp.abs(s), elem_sign * ds
  inv_q = 1.0 / q
  f = p * inv_q
  g_num = g * inv_q  # dL/dP
  g_den = -g_num * f if elem_sign is None else -g_num * f * elem_sign  # dL/dS
  grad_x = g_num * (dp - f * dq)
  grad_a = _power_sums(g_num, x, 0, a.shape[0], a.shape[1:])
  grad_b = _power_sums(g_den, u, start, b.shape[0], b.shape[1:])
  if version == "A":
    grad_b = grad_b * jnp.where(b >= 0, 1.0, -1.0)  # d|b|/db, taken as +1 at b = 0 so zero-init can learn
  return grad_x, grad_a.reshape(a.shape), grad_b.reshape(b.shape)


_rational_fused.defvjp(_rational_fwd, _rational_bwd)


def _rational32(x: jax.Array, a: jax.Array, b: jax.Array, version: str, rng: jax.Array | None,
                noise: float) -> jax.Array:
  """P(x) / Q(x) with x, a, b already in the evaluation dtype; a [m+1, *S], b [n(+1), *S]."""
  check_version(version)
  if rng is not None:
    if version != "D":
      raise ValueError(f"numerator noise (rng) is only defined for version D, not {version!r}")
    a = a * jax.random.uniform(rng, a.shape, a.dtype, 1.0 - noise, 1.0 + noise)
  return _rational_fused(x, a, b, version)


def rational(
  x: jax.Array,
  numerator: jax.Array,
  denominator: jax.Array,
  version: str = "A",
  *,
  rng: jax.Array | None = None,
  noise: float = 0.1,
) -> jax.Array:
  """F(x) = P(x) / Q(x) elementwise; x [...], numerator [m+1], denominator [n] ([n+1] for C).

  `rng` (version D only, training only) draws one U[1-noise, 1+noise] factor per numerator
  coefficient per call; pass None at evaluation. Differentiable in reverse mode (grad, vjp, and
  forward-over-reverse); the backward is hand-written (`_rational_fused`), so plain `jax.jvp`
  through it is not supported.
  """
  ct = _f32(x)
  a, b = numerator.astype(ct), denominator.astype(ct)
  return _rational32(x.astype(ct), a, b, version, rng, noise).astype(x.dtype)


def _per_group(coeffs: jax.Array, groups: int, dtype: jnp.dtype) -> jax.Array:
  """[k] (shared) or [G, k] -> [k, G, 1] / [k, 1, 1], broadcasting against x [..., G, D/G]."""
  c = coeffs.astype(dtype)
  if c.ndim == 1:
    return c[:, None, None]
  if c.shape[0] != groups:
    raise ValueError(f"coefficients of shape {coeffs.shape} do not have {groups} groups")
  return c.T[:, :, None]


def group_rational(
  x: jax.Array,
  numerator: jax.Array,
  denominator: jax.Array,
  version: str = "A",
  *,
  rng: jax.Array | None = None,
  noise: float = 0.1,
) -> jax.Array:
  """One rational per contiguous channel group (GR-KAN); channel c of the last axis uses group c // (D/G).

  numerator [G, m+1] or [m+1] (shared by all groups), denominator [G, n] or [n] (shared); G comes
  from whichever is 2-D (both shared = a plain `rational`). x [..., D] with D divisible by G.
  """
  two_d = [c.shape[0] for c in (numerator, denominator) if c.ndim == 2]
  if not two_d:
    return rational(x, numerator, denominator, version, rng=rng, noise=noise)
  groups, d = two_d[0], x.shape[-1]
  if d % groups:
    raise ValueError(f"{d} channels cannot be split into {groups} equal groups")
  ct = _f32(x)
  xg = x.astype(ct).reshape(*x.shape[:-1], groups, d // groups)  # [..., G, D/G]
  a, b = _per_group(numerator, groups, ct), _per_group(denominator, groups, ct)
  y = _rational32(xg, a, b, version, rng, noise)
  return y.reshape(x.shape).astype(x.dtype)


def _unit_rms(u: jax.Array, eps: float) -> jax.Array:
  """u / sqrt(mean(u², last axis) + eps)."""
  return u * jax.lax.rsqrt(jnp.mean(jnp.square(u), axis=-1, keepdims=True) + eps)


def polynorm(x: jax.Array, weight: jax.Array, bias: jax.Array, eps: float = 1e-6) -> jax.Array:
  """PolyNorm: w0 N(x³) + w1 N(x²) + w2 N(x) + b, N = RMS normalisation over the last axis.

  x [..., F], weight [3], bias [1].
  """
  ct = _f32(x)
  x32, w = x.astype(ct), weight.astype(ct)
  x2 = x32 * x32
  y = w[0] * _unit_rms(x2 * x32, eps) + w[1] * _unit_rms(x2, eps) + w[2] * _unit_rms(x32, eps)
  return (y + bias.astype(ct)[0]).astype(x.dtype)


def polyrelu(x: jax.Array, weight: jax.Array, bias: jax.Array) -> jax.Array:
  """PolyReLU: w0 relu(x)³ + w1 relu(x)² + w2 relu(x) + b; weight [3], bias [1]."""
  ct = _f32(x)
  r = jax.nn.relu(x.astype(ct))
  coeffs = jnp.concatenate([bias.astype(ct), weight.astype(ct)[::-1]])  # b, w2, w1, w0
  return horner(coeffs, r).astype(x.dtype)


def swish(x: jax.Array, beta: jax.Array) -> jax.Array:
  """Swish x · σ(βx) with a learnable β (scalar or broadcasting against x)."""
  ct = _f32(x)
  x32 = x.astype(ct)
  return (x32 * jax.nn.sigmoid(beta.astype(ct) * x32)).astype(x.dtype)
