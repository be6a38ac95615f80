"""Least-squares rational presets: fit errors, the papers' coefficients, variance gains, numpy == jax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.activations import fit
from layers.activations import functional as F
from layers.activations import rational_op as R

# RMSE bounds on [-3, 3] for version A, degrees (5, 4).
MAX_RMSE = {"leaky_relu": 6e-3, "relu": 6e-3, "gelu": 1e-3, "swish": 1e-6, "tanh": 1e-5, "sigmoid": 1e-7,
            "identity": 1e-12}
# PAPERS.md: leaky-ReLU(0.01) fit for version A (5, 4), PAU's own leaky-ReLU preset, KAT's swish preset.
PAPER_LEAKY_A = ([0.02979, 0.61837, 2.32331, 3.05194, 1.48542, 0.25102], [-1.14195, 4.39316, 0.87147, 0.34720])
PAU_LEAKY = ([0.0335584, 0.5050004, 1.6534393, 2.0100105, 0.9319020, 0.1524241],
             [3.3e-6, 3.9802157, 5.1e-7, 0.3018301])
KAT_SWISH = ([3.05e-7, 0.5, 0.24999783, 0.05326628, 0.00580303, 0.00027520],
             [-4.11e-6, 0.10652899, -1.27e-6, 0.00055023])


def grid_rmse(coeffs, target: str, version: str = "A") -> float:
  x = fit.fit_grid()
  y = fit.rational_and_jacobian(x, np.asarray(coeffs[0]), np.asarray(coeffs[1]), version)[0]
  return float(np.sqrt(np.mean((y - fit.TARGETS[target](x)) ** 2)))


@pytest.mark.parametrize("name", sorted(MAX_RMSE))
def test_preset_fit_error_small(name):
  p = fit.preset(name)
  assert p.numerator.shape == (6,) and p.denominator.shape == (4,)
  assert p.rmse < MAX_RMSE[name]
  assert np.isclose(p.rmse, grid_rmse((p.numerator, p.denominator), name))


def test_presets_match_or_beat_published_coefficients():
  leaky = fit.preset("leaky_relu")
  assert leaky.rmse <= 1.001 * grid_rmse(PAPER_LEAKY_A, "leaky_relu")  # 5.03e-3
  assert leaky.rmse <= grid_rmse(PAU_LEAKY, "leaky_relu")
  assert fit.preset("swish").rmse <= grid_rmse(KAT_SWISH, "swish")


def test_every_version_and_other_degrees():
  for version in R.VERSIONS:
    p = fit.preset("gelu", version)
    assert p.denominator.shape == (R.denominator_size(version, 4),) and p.rmse < 1e-3, version
  assert fit.preset("tanh", "A", 3, 2).rmse < 1e-3
  assert fit.preset("tanh", "A", 3, 2).rmse > fit.preset("tanh", "A").rmse


def test_refit_gelu_beats_version_mismatch():
  """KAT's trap: a gelu preset fitted for version B but evaluated as version A has the wrong shape."""
  b_fit = fit.preset("gelu", "B")
  assert grid_rmse((b_fit.numerator, b_fit.denominator), "gelu", "A") > 10 * fit.preset("gelu", "A").rmse


def test_recovers_a_known_rational():
  a, b = np.array([0.1, 0.9, 0.3, -0.2, 0.05, 0.01]), np.array([0.5, 0.4, -0.1, 0.2])
  target = lambda x: fit.rational_and_jacobian(x, a, b, "B")[0]  # noqa: E731
  assert fit.fit_rational(target, "B").rmse < 1e-8


def test_custom_range_and_unknown_preset():
  assert fit.fit_rational(np.sin, "A", lo=-1.0, hi=1.0).rmse < 1e-6
  with pytest.raises(ValueError, match="unknown rational init preset"):
    fit.preset("softplus")


def test_kat_variance_gains():
  """gain² = 1 / E[F(x)²], x ~ N(0, 1). Quadrature is exact (E[relu²] = 1/2); KAT quotes 2.8178 (swish)
  and 2.3568 (gelu), sampled estimates within 0.3% of the exact 2.8108 and 2.3517."""
  assert np.isclose(fit.second_moment(fit.TARGETS["relu"]), 0.5, rtol=1e-3)
  assert np.isclose(fit.second_moment(fit.TARGETS["identity"]), 1.0, rtol=1e-12)
  assert np.isclose(1 / fit.second_moment(fit.TARGETS["swish"]), 2.8178, rtol=3e-3)
  assert np.isclose(1 / fit.second_moment(fit.TARGETS["gelu"]), 2.3568, rtol=3e-3)
  swish = fit.preset("swish")
  gain = 1 / fit.rational_second_moment(swish.numerator, swish.denominator)
  assert np.isclose(gain, 1 / fit.second_moment(fit.TARGETS["swish"]), rtol=1e-4)


def test_numpy_evaluation_matches_functional():
  x = np.linspace(-4, 4, 97)
  with jax.enable_x64(True):
    for version in ("A", "B", "C", "N"):
      p = fit.preset("leaky_relu", version)
      ours = fit.rational_and_jacobian(x, p.numerator, p.denominator, version)[0]
      ref = F.rational(jnp.asarray(x), jnp.asarray(p.numerator), jnp.asarray(p.denominator), version)
      np.testing.assert_allclose(ours, np.asarray(ref), rtol=1e-12, atol=1e-14, err_msg=version)
