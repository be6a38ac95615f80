"""The rational op over the full fp32 range (|x| up to 3e38, ±inf, NaN) against exact rational arithmetic, and
its fused backward against autodiff of the literal formula (the CPU forms, groups, fp32 accuracy of the sums).
Tests that take `form` run twice: through the C++ CPU kernel (`rational_cpu`) and through the XLA form."""

import functools
import os
import warnings
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from layers import cpu_kernels
from layers.activations import rational_cpu
from layers.activations import rational_op as R
from layers.activations.fit import preset

LARGE = [1e8, -1e8, 1e30, -1e30, 3e38, -3e38]


def _sign(v: Fraction) -> int:
  return 1 if v >= 0 else -1  # +1 at 0, as the op's d|.| convention


def exact(x: float, a, b, version: str):
  """(F, dF/dx, dF/da, dF/db) at x in exact rational arithmetic (Python Fractions), from the definitions."""
  x, a, b = Fraction(x), [Fraction(float(c)) for c in a], [Fraction(float(c)) for c in b]
  p = sum(c * x**i for i, c in enumerate(a))
  dp = sum(i * c * x ** (i - 1) for i, c in enumerate(a) if i)
  j0 = 0 if version == "C" else 1
  v = abs(x) if version == "A" else x
  beta = [abs(c) for c in b] if version == "A" else b
  s = sum(c * v ** (j + j0) for j, c in enumerate(beta))
  ds = sum((j + j0) * c * v ** (j + j0 - 1) for j, c in enumerate(beta) if j + j0)
  q0 = Fraction(0.1) if version == "C" else 1
  if version in "BCD":
    h = _sign(s)
    q, dq, dq_db = q0 + abs(s), h * ds, [h * v ** (j + j0) for j in range(len(b))]
  elif version == "A":
    q, dq = q0 + s, (1 if x > 0 else -1 if x < 0 else 0) * ds
    dq_db = [_sign(c) * v ** (j + j0) for j, c in enumerate(b)]
  else:
    q, dq, dq_db = q0 + s, ds, [v ** (j + j0) for j in range(len(b))]
  f = p / q
  return f, (dp * q - p * dq) / q**2, [x**i / q for i in range(len(a))], [-p / q**2 * d for d in dq_db]


def to_f32(g: float, value: Fraction) -> np.float32:
  """g·value rounded to fp32 (±inf beyond its range), through an exact product."""
  v = float(Fraction(g) * value)
  with np.errstate(over="ignore"):
    return np.float32(v)


@pytest.fixture
def kernel(cpu_kernel):
  """The C++ CPU kernel, built (skipped only where it cannot be: no compiler, or switched off)."""
  cpu_kernel(rational_cpu.enabled)


@pytest.fixture(params=["kernel", "xla"])
def form(request, monkeypatch):
  """Which CPU form fp32 inputs take: the C++ kernel, or the XLA form (ABLAX_CPU_KERNELS=0 while tracing)."""
  if request.param == "xla":
    monkeypatch.setenv("ABLAX_CPU_KERNELS", "0")
  else:
    request.getfixturevalue("kernel")
  return request.param


def op_and_vjp(version: str):
  """jit((x, a, b, g) -> (F, dL/dx, dL/da, dL/db)), traced for the form selected now."""
  return _op_and_vjp(version, os.environ.get("ABLAX_CPU_KERNELS", "1"))


@functools.cache
def _op_and_vjp(version: str, kernels: str):
  def run(x, a, b, g):
    y, vjp = jax.vjp(lambda x, a, b: R.fused_rational(x, a, b, version), x, a, b)
    return (y, *vjp(g))

  return jax.jit(run)


def coefficient_sets(version: str):
  """The PAU leaky-ReLU preset and degenerate sets whose leading coefficients vanish (identity init, b_n = 0)."""
  fit = preset("leaky_relu", version)
  n_den = R.denominator_size(version, 4)
  identity_a = np.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
  identity_b = np.zeros(n_den)
  if version == "C":
    identity_b[0] = 0.9
  low_b = np.array(fit.denominator)
  low_b[-1] = 0.0  # Q of degree 3 under a degree-5 numerator: F ~ x^2
  low_a = np.array(fit.numerator)
  low_a[3:] = 0.0  # P of degree 2 over a degree-4 Q: F -> 0
  return {"preset": (fit.numerator, fit.denominator), "identity": (identity_a, identity_b),
          "b_n=0": (fit.numerator, low_b), "a_3..5=0": (low_a, fit.denominator)}


@pytest.mark.parametrize("version", ["A", "B", "C", "N"])
def test_large_inputs_match_exact_arithmetic(form, version):
  """F, dF/dx and g·dF/dcoefficient at |x| in {1e8, 1e30, 3e38} equal the exact values rounded to fp32:
  finite whenever the exact value is representable, ±inf only where it is not."""
  fn = op_and_vjp(version)
  for label, (a, b) in coefficient_sets(version).items():
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    for x in LARGE:
      for g in (1.0, 1e-3):
        y, dx, da, db = fn(jnp.asarray([x], jnp.float32), a32, b32, jnp.asarray([g], jnp.float32))
        f, df, dfa, dfb = exact(float(np.float32(x)), np.asarray(a32), np.asarray(b32), version)
        got = [y[0], dx[0], *da, *db]
        want = [to_f32(1.0, f), to_f32(g, df), *(to_f32(g, t) for t in dfa), *(to_f32(g, t) for t in dfb)]
        for i, (u, w) in enumerate(zip(got, want)):
          u = np.float32(u)
          where = f"{version} {label} x={x} g={g} output {i}: got {u}, exact {w}"
          if np.isfinite(w):
            assert np.isfinite(u) and abs(u - w) <= 1e-5 * abs(w) + 1e-37, where
          else:
            assert u == w, where


@pytest.mark.parametrize("version", ["A", "B", "C", "N"])
def test_moderate_inputs_fast_and_full_range_forms_agree(version):
  """Below the threshold both forms are the literal formula: same values and gradients (groups too)."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(5, 4, 6)) * 3, jnp.float32)
  g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  n_den = R.denominator_size(version, 4)
  a = jnp.asarray(rng.normal(size=(6, 4, 1)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(n_den, 4, 1)) * 0.5, jnp.float32)
  f = R._forward(x, a, b, version, False)
  np.testing.assert_allclose(R._forward(x, a, b, version, True), f, rtol=1e-6)
  for full, fast in zip(R._backward(x, g, a, b, version), R._backward_literal(x, g, f, a, b, version)):
    np.testing.assert_allclose(full, fast, rtol=1e-5, atol=1e-5 * float(jnp.abs(fast).max()))


def test_infinite_inputs_give_the_limits(form):
  """x = ±inf: F(±inf) = ±inf, F'(±inf) = a_5 / |b_4| (version A, 5/4), and the coefficient partials are their
  limits (0 for a_0..a_3, 1/|b_4| for a_4, inf for a_5)."""
  fit = preset("leaky_relu", "A")
  a, b = jnp.asarray(fit.numerator, jnp.float32), jnp.asarray(fit.denominator, jnp.float32)
  y, dx, da, db = op_and_vjp("A")(jnp.asarray([np.inf, -np.inf]), a, b, jnp.asarray([1.0, 0.0]))
  assert y[0] == np.inf and y[1] == -np.inf
  np.testing.assert_allclose(dx, [fit.numerator[5] / abs(fit.denominator[3]), 0.0], rtol=1e-6)
  np.testing.assert_allclose(da[:4], 0.0)
  np.testing.assert_allclose(da[4], 1.0 / abs(fit.denominator[3]), rtol=1e-6)
  assert da[5] == np.inf
  assert np.all(np.isfinite(db[:3])) and not np.isfinite(db[3])


def test_masked_nonfinite_inputs_poison_nothing(form):
  """NaN / inf inputs with zero cotangent contribute exactly zero; with a non-zero cotangent a NaN makes its
  own input gradient and its own group's coefficient gradients NaN, and nothing else."""
  fit = preset("leaky_relu", "A")
  a = jnp.asarray(np.stack([fit.numerator] * 2).T[:, :, None], jnp.float32)  # [6, G=2, 1]
  b = jnp.asarray(np.stack([fit.denominator] * 2).T[:, :, None], jnp.float32)
  x = jnp.asarray(np.linspace(-2, 2, 2 * 2 * 3).reshape(2, 2, 3), jnp.float32)  # [rows, G, D/G]
  g = jnp.ones_like(x)
  clean = op_and_vjp("A")(x, a, b, g)
  masked = op_and_vjp("A")(x.at[0, 0, 0].set(np.nan).at[1, 1, 2].set(np.inf), a, b,
                           g.at[0, 0, 0].set(0.0).at[1, 1, 2].set(0.0))
  for name, m in zip("dx da db".split(), masked[1:]):
    assert np.all(np.isfinite(m)), name
  grad_x_mask = np.ones(x.shape, bool)
  grad_x_mask[0, 0, 0] = grad_x_mask[1, 1, 2] = False
  np.testing.assert_allclose(np.asarray(masked[1])[grad_x_mask], np.asarray(clean[1])[grad_x_mask], rtol=1e-5)
  y, dx, da, db = op_and_vjp("A")(x.at[0, 0, 0].set(np.nan), a, b, g)
  assert np.isnan(y[0, 0, 0]) and np.isnan(dx[0, 0, 0])
  assert np.sum(~np.isfinite(y)) == 1 and np.sum(~np.isfinite(dx)) == 1
  assert np.all(np.isnan(da[:, 0])) and np.all(np.isnan(db[:, 0]))  # group 0 holds the NaN
  assert np.all(np.isfinite(da[:, 1])) and np.all(np.isfinite(db[:, 1]))  # group 1 stays clean


def _check_against_autodiff(version, a, b, x, g):
  ours = op_and_vjp(version)(*(jnp.asarray(c, jnp.float32) for c in (x, a, b, g)))
  with jax.enable_x64(True):
    y, vjp = jax.vjp(lambda x, a, b: R.rational_value(x, a, b, version),
                     *(jnp.asarray(np.asarray(c), jnp.float64) for c in (x, a, b)))
    ref = (y, *vjp(jnp.asarray(g, jnp.float64)))
  for got, want in zip(ours, ref):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("version", ["A", "B", "C", "N"])
def test_fused_backward_matches_autodiff(form, version):
  """The hand-written backward equals autodiff of the literal formula: per group for every version, and
  one shared rational / a shared numerator with per-group denominators for version A."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 5, 4, 4)) * 2
  n_den = R.denominator_size(version, 4)
  layouts = [((6, 4, 1), (n_den, 4, 1))]
  if version == "A":  # shared; shared numerator; per channel (last axis); a layout no group index describes
    layouts += [((6,), (n_den,)), ((6, 1, 1), (n_den, 4, 1)), ((6, 4), (n_den, 4)), ((6, 5, 1, 4), (n_den, 1))]
  for a_shape, b_shape in layouts:
    a, b = rng.normal(size=a_shape), rng.normal(size=b_shape) * 0.5
    _check_against_autodiff(version, a, b, x, rng.normal(size=x.shape))


@pytest.mark.parametrize("rows, far", [(512, False), (4099, False), (4099, True)])
def test_cpu_forms_against_autodiff(form, rows, far, version="A"):
  """Each CPU form equals autodiff of the literal formula, one shared rational and 4 groups: the literal form
  with its coefficient gradients in runs of 256 (512 x 16 elements) or, for a size no run length divides
  (4099 x 16), one reduction per coefficient; and once one element lies beyond the threshold, the full-range
  form over blocks of rows (here 2 of 2048 rows and a remainder of 3)."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(rows, 4, 4)) * 2
  g = rng.normal(size=x.shape)
  assert (R._sum_layout(x.shape, ()) is None) == (rows == 4099)
  if far:
    x[300, 0, 0], g[300, 0, 0] = -7e5, 1e-5  # |x| > T = 2^19
  fit = preset("leaky_relu", version)
  for groups in (False, True):
    a, b = fit.numerator, fit.denominator
    if groups:
      a, b = (np.stack([c * (1 + 0.1 * k) for k in range(4)], -1)[:, :, None] for c in (a, b))
    _check_against_autodiff(version, a, b, x, g)


def test_coefficient_gradients_keep_fp32_accuracy_over_many_elements(form):
  """Over 2^20 elements each coefficient gradient Σ t is within 1e-8 Σ|t| of its fp64 value; one fp32 chain
  over them all is off by more (~1e-7 Σ|t|; the CPU form adds runs of 256, then the runs' sums)."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(1024, 1024)).astype(np.float32)
  g = rng.normal(size=x.shape).astype(np.float32)
  fit = preset("leaky_relu", "A")
  a, b = np.asarray(fit.numerator, np.float32), np.asarray(fit.denominator, np.float32)
  _, _, da, db = op_and_vjp("A")(*(jnp.asarray(c) for c in (x, a, b, g)))
  xd, gd, ad, bd = (np.asarray(c, np.float64) for c in (x, g, a, b))
  q = 1 + sum(abs(bd[j]) * np.abs(xd) ** (j + 1) for j in range(4))
  f = sum(ad[i] * xd**i for i in range(6)) / q
  terms = [gd * xd**i / q for i in range(6)] + [-gd * f / q * np.abs(xd) ** (j + 1) * np.sign(bd[j]) for j in range(4)]
  error = np.abs(np.concatenate([da, db]) - [t.sum() for t in terms]) / [np.abs(t).sum() for t in terms]
  chain = [abs(np.cumsum(t.ravel().astype(np.float32))[-1] - t.sum()) / np.abs(t).sum() for t in terms]
  assert np.max(error) < 1e-8 < np.max(chain), (error, chain)


@pytest.mark.parametrize("version", ["A", "B", "C", "N"])
def test_rational_gradients(version):
  """Gradients against finite differences in fp64 (away from the |x| kink)."""
  with jax.enable_x64(True):
    x = np.linspace(-3.0, 3.0, 24) + 0.013
    x = jnp.asarray(x[np.abs(x) > 0.05])
    fit = preset("leaky_relu", version)
    a, b = jnp.asarray(fit.numerator), jnp.asarray(fit.denominator)
    check_grads(jax.jit(lambda x, a, b: R.fused_rational(x, a, b, version)), (x, a, b), order=1, modes=("rev",),
                eps=1e-6)


def test_reverse_over_reverse():
  """The backward is differentiable: d/dx of a coefficient gradient equals autodiff of the literal formula."""
  with jax.enable_x64(True):
    x = jnp.linspace(-2.5, 2.5, 16) + 0.013
    fit = preset("leaky_relu", "A")
    a, b = jnp.asarray(fit.numerator), jnp.asarray(fit.denominator)

    def outer(fn):
      return jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(lambda b: jnp.sum(fn(x, a, b, "A") ** 2))(b) ** 2)))

    np.testing.assert_allclose(outer(R.fused_rational)(x), outer(R.rational_value)(x), rtol=1e-9)


def test_group_layout():
  """Coefficient shapes the kernel serves map element i to group (i // inner) % G; others are refused."""
  assert rational_cpu.group_layout((3, 5, 4, 4), ()) == (1, 240)
  assert rational_cpu.group_layout((3, 5, 4, 4), (4, 1)) == (4, 4)
  assert rational_cpu.group_layout((3, 5, 4, 4), (4,)) == (4, 1)
  assert rational_cpu.group_layout((3, 5, 4, 4), (5, 4, 1)) == (20, 4)
  assert rational_cpu.group_layout((3, 5, 4, 4), (5, 1, 4)) is None  # groups not contiguous in memory
  assert rational_cpu.group_layout((4,), (2, 4)) is None


@pytest.mark.parametrize("version", ["A", "B", "C", "D", "N"])
def test_kernel_matches_the_xla_literal_form(kernel, version):
  """The C++ kernels compute what `_forward(full_range=False)` and `_backward_literal` compute: one shared
  rational over a size no vector width divides, groups of 37 (runs ending mid-vector), per-channel coefficients
  (a group per element), and 4 groups over 300k elements (several chunks of parallel work); the coefficient
  sums come out bit-identical when run again (fixed chunks, added in order), and the step runs the kernels."""
  rng = np.random.default_rng(7)
  n_den = R.denominator_size(version, 4)
  for x_shape, s in [((7, 45), ()), ((4, 3, 37), (3, 1)), ((5, 16), (16,)), ((300, 4, 250), (4, 1))]:
    x = jnp.asarray(rng.normal(size=x_shape) * 2, jnp.float32)
    g = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    a = jnp.asarray(rng.normal(size=(6, *s)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(n_den, *s)) * 0.3, jnp.float32)
    f, far = R._forward_kernel(x, a, b, version)
    xla = R._forward(x, a, b, version, False)
    got = R._backward_kernel(x, g, xla, a, b, version)
    xla = (xla, *R._backward_literal(x, g, xla, a, b, version))
    with jax.enable_x64(True):
      x64, g64, f64, a64, b64 = (jnp.asarray(np.asarray(c), jnp.float64) for c in (x, g, xla[0], a, b))
      exact = (R._forward(x64, a64, b64, version, False), *R._backward_literal(x64, g64, f64, a64, b64, version))
    assert not far
    for i, (u, w, e) in enumerate(zip((f, *got), xla, exact)):  # as close to fp64 as the XLA form, or closer
      assert u.shape == w.shape
      scale = np.abs(np.asarray(e)).max()
      err, err_xla = (np.abs(np.asarray(v, np.float64) - np.asarray(e)).max() / scale for v in (u, w))
      assert err <= max(2 * err_xla, 1e-6), (x_shape, i, err, err_xla)
    again = R._backward_kernel(x, g, xla[0], a, b, version)
    assert all(np.array_equal(u, v) for u, v in zip(got, again))
  hlo = op_and_vjp(version).lower(x, a, b, g).as_text()
  assert "ablax_rational_forward" in hlo and "ablax_rational_backward" in hlo


def test_kernel_flags_inputs_beyond_the_threshold(kernel):
  """One |x| > T, ±inf or NaN anywhere sets the kernel's flag (the op then takes the full-range form)."""
  fit = preset("leaky_relu", "A")
  a, b = jnp.asarray(fit.numerator, jnp.float32), jnp.asarray(fit.denominator, jnp.float32)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 1000)), jnp.float32)
  assert not R._forward_kernel(x, a, b, "A")[1]
  for bad in (R.threshold(5, 4) * 1.01, -np.inf, np.nan):
    assert R._forward_kernel(x.at[2, 999].set(bad), a, b, "A")[1], bad
  assert not R._forward_kernel(x.at[2, 999].set(R.threshold(5, 4)), a, b, "A")[1]


def test_reverse_over_reverse_fp32(form):
  """fp32 (the kernel's dtype): d/dx of a coefficient gradient equals autodiff of the literal formula, the
  kernels being differentiated through their XLA counterparts; vmap over the op runs the kernel per item."""
  x = jnp.linspace(-2.5, 2.5, 64, dtype=jnp.float32).reshape(4, 16) + 0.013
  fit = preset("leaky_relu", "A")
  a, b = jnp.asarray(fit.numerator, jnp.float32), jnp.asarray(fit.denominator, jnp.float32)

  def outer(fn):
    return jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(lambda b: jnp.sum(fn(x, a, b, "A") ** 2))(b) ** 2)))

  want = outer(R.rational_value)(x)
  np.testing.assert_allclose(outer(R.fused_rational)(x), want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
  step = jax.jit(jax.vmap(jax.grad(lambda x: jnp.sum(R.fused_rational(x, a, b, "A") ** 2))))
  np.testing.assert_allclose(step(x), jax.grad(lambda x: jnp.sum(R.rational_value(x, a, b, "A") ** 2))(x),
                             rtol=1e-5, atol=1e-6)


def test_kernel_build_failure_falls_back_with_a_warning(monkeypatch, tmp_path):
  """No usable compiler: a warning naming the cause, and the op keeps its XLA form; ABLAX_CPU_KERNELS=0 turns
  the kernels off without building."""
  monkeypatch.setenv("ABLAX_KERNEL_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  with pytest.warns(UserWarning, match="no-such-compiler"):
    assert cpu_kernels.load.__wrapped__(rational_cpu.SOURCE, ()) is False
  monkeypatch.setenv("ABLAX_CPU_KERNELS", "0")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert rational_cpu.enabled() is False
  assert not any(tmp_path.iterdir())
