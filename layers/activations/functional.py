"""Activations as pure functions: rational (PAU), group rational (KAT), PolyCom, Swish-β, APA / AGLU, CRReLU,
(generalised) SmeLU, HeLU, Snake, VeLU (and its Wasserstein-2 regulariser).

Every function evaluates in fp32 (fp64 for fp64 inputs) whatever the input dtype, polynomials by
Horner's rule, and returns the input dtype. Rational coefficient order is ascending: numerator a_0..a_m,
denominator b_1..b_n (version C: b_0..b_n); the denominator versions, the full-range evaluation and the
fused backward are `layers.activations.rational_op`.
"""

import functools

import jax
import jax.numpy as jnp

from layers.activations.rational_op import check_version, fused_rational, horner


def _f32(x: jax.Array) -> jnp.dtype:
  """The evaluation dtype: at least fp32 (bf16 / fp16 inputs are upcast)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _rational32(x: jax.Array, a: jax.Array, b: jax.Array, version: str, rng: jax.Array | None,
                noise: float) -> jax.Array:
  """P(x) / Q(x) with x, a, b already in the evaluation dtype; a [m+1, *S], b [n(+1), *S]."""
  check_version(version)
  if rng is not None:
    if version != "D":
      raise ValueError(f"numerator noise (rng) is only defined for version D, not {version!r}")
    a = a * jax.random.uniform(rng, a.shape, a.dtype, 1.0 - noise, 1.0 + noise)
  return fused_rational(x, a, b, version)


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
  coefficient per call; pass None at evaluation. Finite for every finite x whose F(x) is representable,
  gradients likewise (`rational_op` states the full-range behaviour). Differentiable in reverse mode
  (grad, vjp, reverse-over-reverse); the backward is hand-written (`rational_op.fused_rational`), so
  `jax.jvp` through it is not supported.
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


def apa(x: jax.Array, kappa: jax.Array, lam: jax.Array) -> jax.Array:
  """Adaptive Parametric Activation (λ e^{-κx} + 1)^{-1/λ} (Alexandridis et al., ECCV 2024).

  λ = 1 is the sigmoid σ(κx); λ -> 0 the Gumbel CDF exp(-e^{-κx}). Evaluated as
  exp(-softplus(log λ - κx) / λ) (no overflow of e^{-κx}); λ is floored at 1e-4 as in the authors' code.
  kappa, lam broadcast against x [..., F].
  """
  ct = _f32(x)
  x32, k, lm = x.astype(ct), kappa.astype(ct), jnp.maximum(lam.astype(ct), 1e-4)
  return jnp.exp(-jax.nn.softplus(jnp.log(lm) - k * x32) / lm).astype(x.dtype)


def aglu(x: jax.Array, kappa: jax.Array, lam: jax.Array) -> jax.Array:
  """AGLU = x · APA(x): the paper's gated linear unit for hidden layers (κ = λ = 1 is SiLU)."""
  return (x.astype(_f32(x)) * apa(x, kappa, lam).astype(_f32(x))).astype(x.dtype)


def crrelu(x: jax.Array, eps: jax.Array) -> jax.Array:
  """Correction-regularised ReLU (EAFO): relu(x) + ε x exp(-x² / 2), ε learnable."""
  ct = _f32(x)
  x32 = x.astype(ct)
  return (jax.nn.relu(x32) + eps.astype(ct) * x32 * jnp.exp(-0.5 * x32 * x32)).astype(x.dtype)


def generalized_smelu(x: jax.Array, alpha: float = 1.0, beta: float = 1.0, slope_left: float = 0.0,
                      slope_right: float = 1.0, offset: float = 0.0) -> jax.Array:
  """Piecewise linear-quadratic-linear: slope `slope_left` below -alpha (value `offset` at -alpha), a
  quadratic on [-alpha, beta] whose slope goes linearly from slope_left to slope_right (C¹ at both knees),
  slope `slope_right` above beta. SmeLU (Shamir et al.) is alpha = beta, slopes 0 and 1, offset 0:
  0 for x <= -β, (x + β)² / (4β) for |x| <= β, x for x >= β."""
  ct = _f32(x)
  x32 = x.astype(ct)
  curv = (slope_right - slope_left) / (2.0 * (alpha + beta))
  d = jnp.clip(x32, -alpha, beta) + alpha  # distance into the quadratic region, in [0, alpha + beta]
  inside = offset + slope_left * d + curv * d * d
  y = inside + slope_left * jnp.minimum(x32 + alpha, 0.0) + slope_right * jnp.maximum(x32 - beta, 0.0)
  return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def helu(x: jax.Array, alpha: float = 0.05) -> jax.Array:
  """Hysteresis ReLU (Kimhi et al., ENLSP 2024): relu(x) forward; the backward lets the gradient through for
  x > -alpha (a lower threshold than the forward's 0), so units just below 0 keep learning."""
  return jax.nn.relu(x)


def _helu_fwd(x, alpha):
  return jax.nn.relu(x), x


def _helu_bwd(alpha, x, g):
  return (jnp.where(x > -alpha, g, jnp.zeros_like(g)),)


helu.defvjp(_helu_fwd, _helu_bwd)


def snake(x: jax.Array, a: jax.Array) -> jax.Array:
  """Snake (Ziyin et al., NeurIPS 2020): x + sin²(a x) / a, a > 0 (broadcasting against x)."""
  ct = _f32(x)
  x32, a32 = x.astype(ct), a.astype(ct)
  return (x32 + jnp.square(jnp.sin(a32 * x32)) / a32).astype(x.dtype)


def _safe_asin(u: jax.Array) -> jax.Array:
  """asin(clip(u, -1, 1)) with a zero (not infinite) gradient where |u| >= 1; the same values."""
  inside = jnp.abs(u) < 1
  return jnp.where(inside, jnp.arcsin(jnp.where(inside, u, 0.0)), jnp.sign(u) * (jnp.pi / 2))


def velu(x: jax.Array, lam: jax.Array, *, alpha: float = 0.1, beta1: float = 0.1, beta2: float = 0.1,
         gamma: float = 0.1, momentum: float = 0.9, eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """VeLU (Shakarami et al., 2025): (λ · a, a), a = x σ(α (atan(β₁x) + asin(clip(β₂x, ±1)))) (1 + γ tanh(μ / r)).

  r = sqrt(mean(x², last axis) + eps), each row's RMS over its features (so the scale depends on the row
  only, never on the batch); μ is what the authors' code calls `momentum`. x [..., F], lam broadcasting
  against x. Returns the output in x's dtype and the unscaled activation a (fp32 at least), which the
  Wasserstein-2 regulariser (`w2_to_standard_normal`) reads.

  >>> y, a = velu(jnp.linspace(-2.0, 2.0, 5), jnp.ones(()))
  >>> y.shape, a.dtype
  ((5,), dtype('float32'))
  """
  ct = _f32(x)
  x32 = x.astype(ct)
  inv_rms = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  mix = jnp.arctan(beta1 * x32) + _safe_asin(beta2 * x32)
  a = x32 * jax.nn.sigmoid(alpha * mix) * (1.0 + gamma * jnp.tanh(momentum * inv_rms))
  return (lam.astype(ct) * a).astype(x.dtype), a


def w2_to_standard_normal(a: jax.Array) -> jax.Array:
  """Squared Wasserstein-2 distance between N(mean(a), std(a)²) and N(0, 1): mean(a)² + (std(a) - 1)², over
  every element of a (fp32 scalar). VeLU's regulariser; its weight is λ_OT."""
  a = a.astype(_f32(a))
  return jnp.square(jnp.mean(a)) + jnp.square(jnp.std(a) - 1.0)
