"""A variant's compute frontier L(C) and the compute multiplier between two variants, with bootstrap intervals.

Frontier: L(C) = E + A C^-alpha through a variant's compute-optimal points (the isoFLOP minimum of each budget
whose parabola has one, else the budget's best run), with a bootstrap band (each budget's runs resampled) and a
predictive interval (bootstrap spread plus resampled residuals) for extrapolation. Compute multiplier of a
variant against a baseline: the compute the baseline needs to reach the variant's loss, over the variant's
compute (the headline number of a layer-type ablation).
"""

import dataclasses

import numpy as np

from train.scaling import NoFit, budget_groups, interval, parabola, percentile_bounds, run_columns


def frontier_points(flops, loss, params=None, tokens=None) -> tuple[np.ndarray, np.ndarray]:
  """Compute-optimal points (C, L): per budget the isoFLOP minimum when its parabola has one (params and
  tokens given), else the budget's best run; then only points no cheaper point beats."""
  c, y = (np.asarray(x, np.float64) for x in (flops, loss))
  groups = budget_groups(c)
  pts = []
  for g in np.unique(groups):
    idx = np.flatnonzero(groups == g)
    point = (float(np.exp(np.mean(np.log(c[idx])))), float(y[idx].min()))
    if params is not None:
      try:
        p = parabola(np.asarray(params)[idx], np.asarray(tokens)[idx], y[idx], c[idx])
        point = (p.flops, min(p.loss_opt, point[1]))
      except NoFit:
        pass
    pts.append(point)
  out, best = [], np.inf
  for cc, yy in sorted(pts):
    if yy < best:
      out.append((cc, yy))
      best = yy
  return tuple(np.array(v) for v in zip(*out)) if out else (np.array([]), np.array([]))


def _saturating_fit(c: np.ndarray, y: np.ndarray, start=None) -> tuple[np.ndarray, np.ndarray]:
  """((E, A, alpha), residuals in ln L) of the least-squares fit of ln(E + A C^-alpha) to ln L."""
  from scipy.optimize import least_squares

  log_c0 = float(np.mean(np.log(c)))
  x = np.log(c) - log_c0

  def resid(p):
    return np.log(p[0] + np.exp(p[1] - p[2] * x)) - np.log(y)

  floor = float(y.min()) * (1 - 1e-9)
  if start is not None:
    e, big_a, alpha = start
    starts = [(min(e, floor * 0.999), np.log(big_a) - alpha * log_c0, alpha)]
  else:
    spread = max(float(y.max() - y.min()), 1e-6)
    starts = [(f * floor, np.log(spread), a0) for f in (0.0, 0.5, 0.9) for a0 in (0.05, 0.2, 0.5)]
  best = None
  for s in starts:
    res = least_squares(resid, s, bounds=([0.0, -np.inf, 0.0], [floor, np.inf, 5.0]))
    if best is None or res.cost < best.cost:
      best = res
  e, ln_a, alpha = best.x
  return np.array([e, np.exp(ln_a + alpha * log_c0), alpha]), best.fun


MIN_FRONTIER_POINTS = 4  # three parameters + one degree of freedom


@dataclasses.dataclass(frozen=True)
class Frontier:
  """A variant's compute frontier L(C) = E + A C^-alpha; `samples` [bootstrap, 3] (E, A, alpha) per resample."""

  E: float
  A: float
  alpha: float
  flops: np.ndarray
  loss: np.ndarray
  residuals: np.ndarray
  samples: np.ndarray = dataclasses.field(repr=False)

  @property
  def intervals(self) -> dict:
    return {k: interval(self.samples[:, i]) for i, k in enumerate(("E", "A", "alpha"))}

  def __call__(self, flops):
    return self.E + self.A * np.asarray(flops, np.float64) ** -self.alpha

  def _sample_curves(self, flops) -> np.ndarray:  # [bootstrap, len(flops)]
    c = np.atleast_1d(np.asarray(flops, np.float64))
    s = self.samples
    return s[:, :1] + s[:, 1:2] * c[None] ** -s[:, 2:3]

  def band(self, flops) -> tuple[np.ndarray, np.ndarray]:
    """Confidence band of the frontier at `flops` (bootstrap percentiles)."""
    return percentile_bounds(self._sample_curves(flops), 0, drop_nan=True)

  def predict(self, flops, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L, lo, hi) at `flops`: the prediction and its predictive interval (each resample's curve times the
    exponential of a residual drawn from the fit's ln-loss residuals)."""
    curves = self._sample_curves(flops)
    noise = np.random.default_rng(seed).choice(self.residuals, size=curves.shape)
    return (self(np.atleast_1d(flops)), *percentile_bounds(curves * np.exp(noise), 0, drop_nan=True))

  def compute_for(self, loss) -> np.ndarray:
    """The compute at which this frontier reaches `loss` (inf at or below its floor E)."""
    return _inverse(np.asarray(loss, np.float64), self.E, self.A, self.alpha)

  def label(self) -> str:
    iv = self.intervals
    return (f"L = {self.E:.3g} + {self.A:.3g}·C^-{self.alpha:.3f} (α {self.alpha:.3f} [{iv['alpha'][0]:.3f}, "
            f"{iv['alpha'][1]:.3f}], E {self.E:.3g} [{iv['E'][0]:.3g}, {iv['E'][1]:.3g}], {len(self.flops)} points)")

  def to_json(self) -> dict:
    return {"E": self.E, "A": self.A, "alpha": self.alpha, "points": len(self.flops),
            "intervals": {k: list(v) for k, v in self.intervals.items()}}


def _inverse(loss, e, big_a, alpha):
  with np.errstate(divide="ignore", invalid="ignore"):
    c = ((loss - e) / big_a) ** (-1.0 / alpha)
  return np.where((loss > e) & (alpha > 0), c, np.inf)


def fit_frontier(flops, loss, params=None, tokens=None, *, bootstrap: int = 1000, seed: int = 0) -> Frontier:
  """L(C) = E + A C^-alpha through `frontier_points`; each resample redraws every budget's runs.

  Example:
    >>> c = np.logspace(15, 19, 6)
    >>> round(fit_frontier(c, 1.7 + 3e3 * c ** -0.25, bootstrap=20).alpha, 3)
    0.25
  """
  cols = [flops, loss] + ([params, tokens] if params is not None else [])
  arrays = run_columns(*cols)
  c, y = arrays[:2]
  n, d = (arrays[2], arrays[3]) if params is not None else (None, None)
  pc, py = frontier_points(c, y, n, d)
  if len(pc) < MIN_FRONTIER_POINTS:
    raise NoFit(f"{len(pc)} compute-optimal points (budgets that improve on cheaper ones); the frontier "
                f"E + A C^-alpha needs at least {MIN_FRONTIER_POINTS}: add budgets")
  point, residuals = _saturating_fit(pc, py)
  groups = budget_groups(c)
  members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
  rng = np.random.default_rng(seed)
  samples = np.full((bootstrap, 3), np.nan)
  for i in range(bootstrap):
    idx = np.concatenate([rng.choice(m, len(m)) for m in members])
    rc, ry = frontier_points(c[idx], y[idx], None if n is None else n[idx], None if d is None else d[idx])
    if len(rc) >= 3:
      samples[i] = _saturating_fit(rc, ry, start=point)[0]
  return Frontier(*map(float, point), flops=pc, loss=py, residuals=residuals, samples=samples)


def compute_multiplier(variant: Frontier, baseline: Frontier, flops) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(m, lo, hi) at each C in `flops`: m(C) = C_baseline(L_variant(C)) / C, the compute the baseline needs to
  reach the variant's loss at C, over C (> 1: the variant is worth more compute); inf where the baseline's
  floor lies above it. Interval: the variant's and the baseline's resamples paired."""
  c = np.atleast_1d(np.asarray(flops, np.float64))
  m = baseline.compute_for(variant(c)) / c
  k = min(len(variant.samples), len(baseline.samples))
  v, b = variant.samples[:k], baseline.samples[:k]
  loss = v[:, :1] + v[:, 1:2] * c[None] ** -v[:, 2:3]
  ms = _inverse(loss, b[:, :1], b[:, 1:2], b[:, 2:3]) / c[None]
  ms = ms[np.all(np.isfinite(v), 1) & np.all(np.isfinite(b), 1)]  # resamples whose frontier fit failed: none
  if not len(ms):
    return m, np.full_like(c, np.nan), np.full_like(c, np.nan)
  return (m, *percentile_bounds(ms, 0))
