"""Learnable activation cores: golden vectors, gradients, large inputs, dtypes, version D, group mapping."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from layers.activations import functional as F
from layers.activations import rational_op as R

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "activations.npz")
DEN = {"A": "denominator", "B": "denominator", "C": "denominator_c", "N": "denominator_n"}


def rel_rmse(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


def golden_cases(dtype):
  """(name, output, expected) for every golden activation vector, inputs cast to `dtype`."""
  g = {k: jnp.asarray(GOLDEN[k], dtype) for k in GOLDEN.files if k.split("/")[0] in
       ("rational", "group_rational", "polycom")}
  cases = [(f"rational_{v}", F.rational(g["rational/x"], g["rational/numerator"], g[f"rational/{DEN[v]}"], v),
            GOLDEN[f"rational/{v}"]) for v in DEN]
  cases.append(("group_rational", F.group_rational(g["group_rational/x"], g["group_rational/numerator"],
                                                   g["group_rational/denominator"]), GOLDEN["group_rational/y"]))
  for name, fn in (("polynorm", F.polynorm), ("polyrelu", F.polyrelu)):
    cases.append((name, fn(g["polycom/x"], g["polycom/weight"], g["polycom/bias"]), GOLDEN[f"polycom/{name}"]))
  return cases


def test_golden_float64():
  with jax.enable_x64(True):
    for name, out, expected in golden_cases(jnp.float64):
      assert out.dtype == jnp.float64, name
      assert rel_rmse(out, expected) < 1e-10, name


def test_golden_float32():
  for name, out, expected in golden_cases(jnp.float32):
    assert out.dtype == jnp.float32, name
    assert rel_rmse(out, expected) < 1e-5, name


def _away_from_kinks(n: int) -> np.ndarray:
  """Points in [-3, 3] that avoid 0 (the |x| kink) by a margin finite differences respect."""
  x = np.linspace(-3.0, 3.0, n) + 0.013
  return x[np.abs(x) > 0.05]


def test_group_and_polycom_gradients():
  with jax.enable_x64(True):
    x = jnp.asarray(_away_from_kinks(26)[:24].reshape(2, 12))
    a = jnp.asarray(GOLDEN["group_rational/numerator"])
    b = jnp.asarray(GOLDEN["group_rational/denominator"])
    check_grads(jax.jit(F.group_rational), (x, a, b), order=1, modes=("rev",), eps=1e-6)
    w, bias = jnp.asarray(GOLDEN["polycom/weight"]), jnp.asarray(GOLDEN["polycom/bias"])
    check_grads(jax.jit(F.polynorm), (x, w, bias), order=1, modes=("rev",), eps=1e-6)
    check_grads(jax.jit(F.polyrelu), (x, w, bias), order=1, modes=("rev",), eps=1e-6)
    check_grads(jax.jit(F.swish), (x, jnp.asarray([1.3])), order=1, modes=("rev",), eps=1e-6)


def _all_activations():
  r = {v: (jnp.asarray(GOLDEN["rational/numerator"], jnp.float32),
           jnp.asarray(GOLDEN[f"rational/{DEN[v]}"], jnp.float32)) for v in DEN}
  ga, gb = (jnp.asarray(GOLDEN[f"group_rational/{k}"], jnp.float32) for k in ("numerator", "denominator"))
  w, bias = (jnp.asarray(GOLDEN[f"polycom/{k}"], jnp.float32) for k in ("weight", "bias"))
  fns = {f"rational_{v}": (lambda x, v=v: F.rational(x, *r[v], v)) for v in DEN}
  fns["group_rational"] = lambda x: F.group_rational(x, ga, gb)
  fns["polynorm"] = lambda x: F.polynorm(x, w, bias)
  fns["polyrelu"] = lambda x: F.polyrelu(x, w, bias)
  fns["swish"] = lambda x: F.swish(x, jnp.asarray([1.0]))
  return fns


def test_large_inputs_stay_finite():
  x = jnp.asarray(np.array([[-1e4, -3e3, -1.0, 0.0, 1.0, 2e3, 5e3, 1e4]] * 2), jnp.float32)  # [2, 8]
  for name, fn in _all_activations().items():
    y, grad = jax.jit(jax.value_and_grad(lambda x, fn=fn: jnp.sum(fn(x))))(x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(grad)), name


def test_bf16_in_bf16_out_computed_in_fp32():
  x = jnp.asarray(np.linspace(-3.9, 3.9, 64).reshape(2, 32), jnp.bfloat16)
  for name, fn in _all_activations().items():
    y = fn(x)
    assert y.dtype == jnp.bfloat16, name
    expected = fn(x.astype(jnp.float32)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(expected, np.float32), err_msg=name)


def test_version_d_noise():
  x = jnp.linspace(-3.0, 3.0, 101)
  a = jnp.asarray(GOLDEN["rational/numerator"], jnp.float32)
  b = jnp.asarray(GOLDEN["rational/denominator"], jnp.float32)
  y_b = F.rational(x, a, b, "B")
  np.testing.assert_array_equal(F.rational(x, a, b, "D"), y_b)  # evaluation: no noise
  key = jax.random.key(0)
  y1, y1_again, y2 = (F.rational(x, a, b, "D", rng=k) for k in (key, key, jax.random.key(1)))
  np.testing.assert_array_equal(y1, y1_again)
  assert not np.allclose(y1, y2) and not np.allclose(y1, y_b)
  # |P_noisy - P| <= 0.1 Σ |a_i| |x|^i, so |F_D - F_B| <= that / Q.
  bound = 0.1 * F.horner(jnp.abs(a), jnp.abs(x)) / (1 + jnp.abs(x * F.horner(b, x)))
  assert np.all(np.abs(y1 - y_b) <= bound * (1 + 1e-5) + 1e-7)
  with pytest.raises(ValueError, match="version D"):
    F.rational(x, a, b, "A", rng=key)


def test_group_channel_mapping():
  groups, d = 4, 24
  numerator = jnp.zeros((groups, 6)).at[:, 0].set(jnp.arange(groups, dtype=jnp.float32))  # P_g = g
  denominator = jnp.zeros((groups, 4))
  y = F.group_rational(jnp.ones((3, d)), numerator, denominator)
  np.testing.assert_array_equal(y, np.broadcast_to(np.arange(d) // (d // groups), (3, d)))


def test_group_sharing_equals_tiled_coefficients():
  x = jnp.asarray(GOLDEN["group_rational/x"], jnp.float32)
  a = jnp.asarray(GOLDEN["group_rational/numerator"], jnp.float32)
  b = jnp.asarray(GOLDEN["group_rational/denominator"], jnp.float32)
  tile = lambda c: jnp.broadcast_to(c, (4, c.shape[0]))  # noqa: E731
  np.testing.assert_allclose(F.group_rational(x, a[1], b), F.group_rational(x, tile(a[1]), b), rtol=1e-6)
  np.testing.assert_allclose(F.group_rational(x, a, b[2]), F.group_rational(x, a, tile(b[2])), rtol=1e-6)
  np.testing.assert_allclose(F.group_rational(x, a[0], b[0]), F.rational(x, a[0], b[0]), rtol=1e-6)
  with pytest.raises(ValueError, match="equal groups"):
    F.group_rational(jnp.ones((2, 30)), a, b)
  with pytest.raises(ValueError, match="unknown rational version"):
    F.rational(x, a[0], b[0], "E")


@pytest.mark.parametrize("version", ["A", "B", "C", "N"])
def test_zero_denominator_can_learn(version):
  """Identity init (b = 0, exact) must not freeze the denominator: d|b|/db and d|S|/dS are +1 at 0."""
  x = jnp.linspace(-1.0, 2.5, 16)
  a = jnp.zeros(6).at[1].set(1.0)
  b = jnp.zeros(R.denominator_size(version, 4)).at[0].set(0.9 if version == "C" else 0.0)
  np.testing.assert_allclose(F.rational(x, a, b, version), x, rtol=1e-6)
  grad_b = jax.jit(jax.grad(lambda b: jnp.sum(F.rational(x, a, b, version) ** 2)))(b)
  assert np.all(np.isfinite(grad_b)) and np.count_nonzero(grad_b) >= 3
