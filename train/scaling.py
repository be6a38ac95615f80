"""Saturating power-law fits L(C) = E + A * C^(-alpha), with standard errors from the fit covariance."""

import dataclasses

import numpy as np

MIN_POINTS = 4  # three parameters + one degree of freedom for an uncertainty


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  E: float
  A: float
  alpha: float
  E_err: float
  A_err: float
  alpha_err: float
  n: int

  def __call__(self, c):
    return self.E + self.A * np.asarray(c, np.float64) ** (-self.alpha)

  @property
  def constrained(self) -> bool:
    """False when the data do not pin the exponent down (its error exceeds its value)."""
    return bool(np.isfinite(self.alpha_err) and self.alpha_err < self.alpha)

  def label(self) -> str:
    return f"L = {self.E:.3g} + {self.A:.3g}·C^-{self.alpha:.3f} (α = {self.alpha:.3f} ± {self.alpha_err:.3f})"


def fit_power_law(compute, loss) -> PowerLaw:
  """Least-squares fit of L = E + A C^-alpha over points with distinct compute.

  Fitted as E + exp(a - alpha * log(C / C0)) with C0 the geometric mean of C, which keeps the
  problem well conditioned over many decades; raises ValueError with too few points.
  """
  from scipy.optimize import curve_fit

  c = np.asarray(compute, np.float64)
  y = np.asarray(loss, np.float64)
  ok = np.isfinite(c) & np.isfinite(y) & (c > 0)
  c, y = c[ok], y[ok]
  if len(np.unique(c)) < MIN_POINTS:
    raise ValueError(f"a power-law fit needs at least {MIN_POINTS} runs with distinct compute, got "
                     f"{len(np.unique(c))}; add sizes (or steps) to the sweep")
  log_c0 = float(np.mean(np.log(c)))
  x = np.log(c) - log_c0

  def f(x, e, a, alpha):
    return e + np.exp(a - alpha * x)

  spread = max(float(y.max() - y.min()), 1e-6)
  best = None
  for alpha0 in (0.05, 0.2, 0.5, 1.0):
    p0 = (max(float(y.min()) - 0.1 * spread, 0.0), np.log(spread), alpha0)
    try:  # E >= 0 (a loss floor) and alpha >= 0 (loss falls with compute)
      p, cov = curve_fit(f, x, y, p0=p0, bounds=([0.0, -np.inf, 0.0], [np.inf, np.inf, np.inf]), maxfev=20000)
    except (RuntimeError, ValueError):
      continue
    err = float(np.sum((f(x, *p) - y) ** 2))
    if best is None or err < best[0]:
      best = (err, p, cov)
  if best is None:
    raise ValueError("the power-law fit did not converge; the losses may not decrease with compute")
  _, (e, a, alpha), cov = best
  se = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else np.full(3, np.inf)
  big_a = float(np.exp(a + alpha * log_c0))  # A for C in its original units
  return PowerLaw(E=float(e), A=big_a, alpha=float(alpha), E_err=float(se[0]),
                  A_err=float(big_a * se[1]), alpha_err=float(se[2]), n=len(c))
