"""Least-squares rational fits of target functions on [-3, 3]: the init presets of Rational / GroupRational.

PAU initialises its rationals by fitting a known activation (leaky ReLU by default) on [-3, 3].
`fit_rational` does that for any target, version and degrees: a linearised least-squares solve
(P(x) - f(x) Q(x) = 0 is linear in the coefficients) gives a start, then Levenberg-Marquardt on the
true residual F(x) - f(x) with the analytic Jacobian of the chosen denominator version. Everything
runs in float64 numpy, once per (target, version, degrees) thanks to a cache.

  python -m layers.activations.fit [--numerator-degree 5 --denominator-degree 4]
prints the fit error of every preset for every version.
"""

import argparse
import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np

from layers.activations.rational_op import VERSIONS, check_version, denominator_size

_erf = np.vectorize(math.erf)

TARGETS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
  "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
  "relu": lambda x: np.maximum(x, 0.0),
  "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
  "swish": lambda x: x / (1.0 + np.exp(-x)),
  "tanh": np.tanh,
  "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
  "identity": lambda x: x,
}


@dataclasses.dataclass(frozen=True)
class Fit:
  """Fitted coefficients (ascending order) and the fit error on the grid."""

  numerator: np.ndarray  # [m+1]
  denominator: np.ndarray  # [n] ([n+1] for version C)
  version: str
  rmse: float
  max_error: float


def fit_grid(lo: float = -3.0, hi: float = 3.0, n_points: int = 2001) -> np.ndarray:
  return np.linspace(lo, hi, n_points)


def _powers(x: np.ndarray, start: int, stop: int) -> np.ndarray:
  return np.vander(x, stop, increasing=True)[:, start:]  # [N, stop - start]: x^start .. x^(stop-1)


def _lstsq(a: np.ndarray, y: np.ndarray) -> np.ndarray:
  """argmin |a t - y|² through column-scaled normal equations (LAPACK's SVD solvers are slow when
  other threads load the CPU); the tiny ridge resolves the exact fits' degenerate directions."""
  scale = np.linalg.norm(a, axis=0) + 1e-300
  an = a / scale
  return np.linalg.solve(an.T @ an + 1e-12 * np.eye(a.shape[1]), an.T @ y) / scale


def _denominator_basis(x: np.ndarray, n_den: int, version: str) -> tuple[np.ndarray, float]:
  """W with Q = q0 + W @ b (up to the version's absolute values), and q0."""
  if version == "A":
    return _powers(np.abs(x), 1, n_den + 1), 1.0
  if version == "C":
    return _powers(x, 0, n_den), 0.1
  return _powers(x, 1, n_den + 1), 1.0


def rational_and_jacobian(
  x: np.ndarray, numerator: np.ndarray, denominator: np.ndarray, version: str
) -> tuple[np.ndarray, np.ndarray]:
  """F(x) [N] and dF/d(numerator, denominator) [N, m+1+len(denominator)], float64."""
  check_version(version)
  v = _powers(x, 0, len(numerator))
  w, q0 = _denominator_basis(x, len(denominator), version)
  p = v @ numerator
  if version == "A":
    q, dq = q0 + w @ np.abs(denominator), w * np.sign(denominator)
  elif version == "N":
    q, dq = q0 + w @ denominator, w
  else:
    s = w @ denominator
    q, dq = q0 + np.abs(s), w * np.sign(s)[:, None]
  f = p / q
  return f, np.concatenate([v / q[:, None], -(f / q)[:, None] * dq], axis=1)


def _levenberg_marquardt(x, y, theta, n_num, version, max_iter=200):
  def residual(t):
    f, jac = rational_and_jacobian(x, t[:n_num], t[n_num:], version)
    return f - y, jac

  r, jac = residual(theta)
  cost, lam = r @ r, 1e-3
  for _ in range(max_iter):
    h, g = jac.T @ jac, jac.T @ r
    scale = np.diag(h) + 1e-12
    while lam < 1e12:
      step = np.linalg.solve(h + lam * np.diag(scale), -g)
      r_new, jac_new = residual(theta + step)
      cost_new = r_new @ r_new
      if np.isfinite(cost_new) and cost_new < cost:
        break
      lam *= 4.0
    else:
      break
    improvement = (cost - cost_new) / max(cost, 1e-300)
    theta, r, jac, cost, lam = theta + step, r_new, jac_new, cost_new, max(lam / 3.0, 1e-12)
    if improvement < 1e-12:
      break
  return theta, cost


def _starts(x: np.ndarray, y: np.ndarray, n_num: int, degree: int, version: str) -> list[np.ndarray]:
  """Starting points from linearised least squares P(x) - y (1 + Σ c_j u^j) = 0 (u = x or |x|),
  reweighted by 1 / Q of the previous solve (Sanathanan-Koerner) so that the linear residual
  approaches the true one; mapped to the version's parameterisation (C: b_0 = 0.9)."""
  starts = []
  for u in (x, np.abs(x)):
    w = _powers(u, 1, degree + 1)
    lin = np.concatenate([_powers(x, 0, n_num), -y[:, None] * w], axis=1)
    q = np.ones_like(x)
    for _ in range(20):
      theta = _lstsq(lin / q[:, None], y / q)
      q = np.maximum(np.abs(1.0 + w @ theta[n_num:]), 1e-3)
      a, c = theta[:n_num], theta[n_num:]
      dens = [np.concatenate([[0.9], c])] if version == "C" else [c, np.abs(c)]
      starts += [np.concatenate([a, d]) for d in dens]
  return starts


def fit_rational(
  target: str | Callable[[np.ndarray], np.ndarray],
  version: str = "A",
  numerator_degree: int = 5,
  denominator_degree: int = 4,
  *,
  lo: float = -3.0,
  hi: float = 3.0,
  n_points: int = 2001,
) -> Fit:
  """Least-squares rational fit of `target` (a preset name or a numpy function) on [lo, hi]."""
  check_version(version)
  fn = TARGETS[target] if isinstance(target, str) else target
  x = fit_grid(lo, hi, n_points)
  y = np.asarray(fn(x), np.float64)
  n_num = numerator_degree + 1
  starts = _starts(x, y, n_num, denominator_degree, version)
  def cost(t):
    r = rational_and_jacobian(x, t[:n_num], t[n_num:], version)[0] - y
    return r @ r if np.all(np.isfinite(r)) else np.inf

  best = sorted(starts, key=cost)[:4]
  theta = min((_levenberg_marquardt(x, y, t, n_num, version) for t in best), key=lambda tc: tc[1])[0]
  err = rational_and_jacobian(x, theta[:n_num], theta[n_num:], version)[0] - y
  return Fit(theta[:n_num], theta[n_num:], version, float(np.sqrt(np.mean(err**2))), float(np.abs(err).max()))


@functools.cache
def _cached_preset(name: str, version: str, numerator_degree: int, denominator_degree: int) -> Fit:
  return fit_rational(name, version, numerator_degree, denominator_degree)


def preset(name: str, version: str = "A", numerator_degree: int = 5, denominator_degree: int = 4) -> Fit:
  """The init preset `name` (a key of TARGETS) fitted for this version and degrees (cached)."""
  if name not in TARGETS:
    raise ValueError(f"unknown rational init preset {name!r}; presets are {sorted(TARGETS)}")
  if name == "identity":  # exact: P = x, Q = 1 (version C: 0.1 + |0.9|), not a fit's near-zero noise
    numerator = np.zeros(numerator_degree + 1)
    numerator[1] = 1.0
    denominator = np.zeros(denominator_size(version, denominator_degree))
    if version == "C":
      denominator[0] = 0.9
    return Fit(numerator, denominator, version, 0.0, 0.0)
  # Version D is version B plus training noise: same deterministic function, same fit.
  fit = _cached_preset(name, "B" if version == "D" else version, numerator_degree, denominator_degree)
  return dataclasses.replace(fit, version=version)


def second_moment(fn: Callable[[np.ndarray], np.ndarray], n_points: int = 80) -> float:
  """E[fn(x)²] for x ~ N(0, 1) by Gauss-Hermite quadrature (for variance-preserving inits)."""
  nodes, weights = np.polynomial.hermite_e.hermegauss(n_points)
  return float(weights @ np.square(fn(nodes)) / math.sqrt(2.0 * math.pi))


def rational_second_moment(numerator: np.ndarray, denominator: np.ndarray, version: str = "A") -> float:
  """E[F(x)²], x ~ N(0, 1), of a rational; KAT scales the next layer's init by gain² = 1 / this."""
  return second_moment(lambda x: rational_and_jacobian(x, numerator, denominator, version)[0])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--numerator-degree", type=int, default=5)
  parser.add_argument("--denominator-degree", type=int, default=4)
  args = parser.parse_args()
  print(f"RMSE (max abs error) of rational fits on [-3, 3], degrees "
        f"({args.numerator_degree}, {args.denominator_degree})")
  print(f"{'preset':<12}" + "".join(f"{v:>22}" for v in VERSIONS))
  for name in TARGETS:
    fits = [preset(name, v, args.numerator_degree, args.denominator_degree) for v in VERSIONS]
    print(f"{name:<12}" + "".join(f"{f.rmse:>11.2e} ({f.max_error:.1e})" for f in fits))


if __name__ == "__main__":
  main()
