"""Scaling-law fits with bootstrap intervals (runs resampled with replacement), from final losses only.

Approach 2 (Hoffmann et al., 2022, "Chinchilla"): per FLOP budget a parabola of loss in ln N; its minimum
gives N*(C), D*(C), L*(C), fitted as power laws N* = G C^a, D* = H C^b, L* = K C^-gamma.
Approach 3: L(N, D) = E + A / N^alpha + B / D^beta, Huber loss (delta 1e-3) on ln L, L-BFGS from the best
points of Hoffmann et al.'s grid of starts; compute-optimal N* ~ C^a, D* ~ C^b with a = beta / (alpha + beta),
b = alpha / (alpha + beta) (for C = 6 N D).
Compute frontiers and multipliers between variants: train/frontier.py.
Bootstrap resamples are refitted all at once (`_refit`, Levenberg-Marquardt on the same objective, started at
the full-data fit). Where the data cannot constrain a fit, `NoFit` says why instead of returning a number.

  python -m train.scaling fit FILE.csv [--bootstrap 1000] [--seed 0]   # rows params,tokens,loss -> one JSON line
"""

import argparse
import csv
import dataclasses
import itertools
import json
import sys

import numpy as np

CONFIDENCE = 0.95
HUBER_DELTA = 1e-3
BUDGET_GAP_DECADES = 0.1  # runs whose compute differs by less than this (after sorting) share a budget
# Hoffmann et al.'s grid of initialisations for approach 3 (ln A = a, ln B = b, ln E = e).
START_GRID = dict(a=np.arange(0.0, 30.0, 5.0), b=np.arange(0.0, 30.0, 5.0), e=np.arange(-1.0, 1.5, 0.5),
                  alpha=np.arange(0.0, 2.5, 0.5), beta=np.arange(0.0, 2.5, 0.5))
LBFGS_STARTS = 16  # L-BFGS runs from this many of the best grid points (the bootstrap: from the full-data fit)


class NoFit(ValueError):
  """The data cannot constrain this fit; the message says why and what to add."""


def percentile_bounds(samples, axis=None, confidence: float = CONFIDENCE, *, drop_nan: bool = False):
  """(lower, upper) central percentiles over `axis`, each taken at a sample (no interpolation, so an infinite
  sample gives an infinite bound, never inf - inf = nan); NaN samples are dropped if `drop_nan`, else count as
  +inf (a resample the fit failed on says the data do not pin the value down)."""
  tail = 50 * (1 - confidence)
  pct = np.nanpercentile if drop_nan else np.percentile
  s = np.asarray(samples, np.float64) if drop_nan else np.where(np.isnan(samples), np.inf, samples)
  return pct(s, tail, axis=axis, method="lower"), pct(s, 100 - tail, axis=axis, method="higher")


def interval(samples, confidence: float = CONFIDENCE) -> tuple[float, float]:
  """Central percentile interval of bootstrap `samples` (NaN samples count as +inf; no samples: nan)."""
  if np.size(samples) == 0:
    return float("nan"), float("nan")
  return tuple(float(b) for b in percentile_bounds(samples, confidence=confidence))


def _resample_weights(n: int, bootstrap: int, rng: np.random.Generator) -> np.ndarray:
  """[bootstrap, n] counts of each run in a resample of n runs drawn with replacement."""
  return rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64)


def run_columns(*columns) -> list[np.ndarray]:
  """The columns as float64 vectors; ValueError unless they have one length and every value is finite and > 0."""
  out = [np.asarray(c, np.float64).ravel() for c in columns]
  if len({len(c) for c in out}) != 1:
    raise ValueError(f"columns of different lengths: {[len(c) for c in out]}")
  bad = np.flatnonzero(~np.all([np.isfinite(c) & (c > 0) for c in out], axis=0))
  if len(bad):
    raise ValueError(f"runs {bad[:5].tolist()}{'...' if len(bad) > 5 else ''} have a value that is not finite and "
                     "positive (parameters, tokens, FLOPs and losses must be); drop those runs")
  return out


# ----------------------------------------------------------------------------------------- approach 3


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
  return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)) / delta


def _residuals(theta: np.ndarray, log_n, log_d, log_l) -> tuple[np.ndarray, np.ndarray]:
  """(r = ln L_pred - ln L [B, n], dr/dtheta [B, n, 5]) for theta [B, 5] = (a, b, e, alpha, beta), where
  L_pred = exp(e) + exp(a) / N^alpha + exp(b) / D^beta."""
  a, b, e, alpha, beta = (theta[:, i:i + 1] for i in range(5))
  terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, a.shape[:1] + log_n.shape)])
  top = terms.max(0)
  ex = np.exp(terms - top)
  total = ex.sum(0)
  p = ex / total  # [3, B, n]: d lse / d term
  jac = np.stack([p[0], p[1], p[2], -p[0] * log_n, -p[1] * log_d], -1)
  return top + np.log(total) - log_l, jac


def _huber_objective(theta: np.ndarray, log_n, log_d, log_l, w, delta: float):
  """(sum of w * Huber(ln L_pred - ln L) / delta, its gradient) at one theta [5], for L-BFGS."""
  r, jac = _residuals(theta[None], log_n, log_d, log_l)
  return float(np.sum(w * _huber(r[0], delta))), (w * np.clip(r[0], -delta, delta) / delta) @ jac[0]


def _grid_objectives(grid: np.ndarray, log_n, log_d, log_l, delta: float) -> np.ndarray:
  """Objective (unweighted) at each start of `grid` [M, 5] -> [M]."""
  return np.sum(_huber(_residuals(grid, log_n, log_d, log_l)[0], delta), axis=1)


def _lbfgs(start, log_n, log_d, log_l, w, delta):
  from scipy.optimize import minimize

  res = minimize(_huber_objective, start, args=(log_n, log_d, log_l, w, delta), jac=True, method="L-BFGS-B",
                 options=dict(maxiter=5000, gtol=1e-9, ftol=1e-15))
  return res.x, res.fun


def _refit(theta: np.ndarray, log_n, log_d, log_l, weights: np.ndarray, delta: float, max_iter: int = 500,
           tol: float = 1e-10) -> np.ndarray:
  """The Huber fit for each row of `weights` [B, n] (run counts of a resample), all at once, from `theta` [5].

  Levenberg-Marquardt on the same objective, with the iteratively-reweighted (IRLS) curvature
  sum w * min(1, delta / |r|) J J^T: a step is kept only where it lowers the objective. Faster than B
  L-BFGS runs by the batch; `tests/test_scaling.py` checks it reaches L-BFGS's optimum.
  """
  thetas = np.repeat(theta[None].astype(np.float64), len(weights), 0)
  lam = np.full(len(weights), 1e-3)
  r, jac = _residuals(thetas, log_n, log_d, log_l)
  value = np.sum(weights * _huber(r, delta), 1)
  for _ in range(max_iter):
    psi = np.clip(r, -delta, delta)
    grad = np.einsum("bn,bnk->bk", weights * psi, jac)
    curv = np.einsum("bn,bnk,bnl->bkl", weights * delta / np.maximum(np.abs(r), delta), jac, jac)
    diag = np.einsum("bkk->bk", curv)
    damped = curv + (lam[:, None] * diag + 1e-12)[:, :, None] * np.eye(5)
    step = -np.linalg.solve(damped, grad[..., None])[..., 0]
    trial = thetas + step
    r_t, jac_t = _residuals(trial, log_n, log_d, log_l)
    value_t = np.sum(weights * _huber(r_t, delta), 1)
    better = value_t < value
    thetas = np.where(better[:, None], trial, thetas)
    r = np.where(better[:, None], r_t, r)
    jac = np.where(better[:, None, None], jac_t, jac)
    gain = np.where(better, value - value_t, 0.0)
    value = np.where(better, value_t, value)
    lam = np.where(better, np.maximum(lam / 3, 1e-9), np.minimum(lam * 4, 1e9))
    if np.all((gain <= tol * np.maximum(value, 1e-300)) & (np.max(np.abs(step), 1) < 1e-7) | (lam >= 1e9)):
      break
  return thetas


@dataclasses.dataclass(frozen=True)
class ParametricFit:
  """L(N, D) = E + A / N^alpha + B / D^beta with bootstrap intervals (`intervals[name] = (lo, hi)`)."""

  E: float
  A: float
  B: float
  alpha: float
  beta: float
  intervals: dict
  n_runs: int
  bootstrap: int
  samples: np.ndarray = dataclasses.field(repr=False)  # [bootstrap, 5]: E, A, B, alpha, beta

  @property
  def a(self) -> float:
    return self.beta / (self.alpha + self.beta)

  @property
  def b(self) -> float:
    return self.alpha / (self.alpha + self.beta)

  def loss(self, params, tokens):
    n, d = np.asarray(params, np.float64), np.asarray(tokens, np.float64)
    return self.E + self.A * n ** -self.alpha + self.B * d ** -self.beta

  def optimal_params(self, flops):
    """N*(C) for C = 6 N D: argmin over N of L(N, C / 6N)."""
    g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
    return g * (np.asarray(flops, np.float64) / 6) ** self.a

  def to_json(self) -> dict:
    names = ("E", "A", "B", "alpha", "beta", "a", "b")
    return {**{k: getattr(self, k) for k in names}, "intervals": {k: list(self.intervals[k]) for k in names},
            "confidence": CONFIDENCE, "n_runs": self.n_runs, "bootstrap": self.bootstrap,
            "huber_delta": HUBER_DELTA}

  def label(self) -> str:
    def show(k, fmt):
      lo, hi = self.intervals[k]
      return f"{k} = {getattr(self, k):{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"
    return ", ".join(show(k, ".3g") for k in ("E", "A", "B", "alpha", "beta", "a", "b"))


def _check_parametric(n, d) -> None:
  if len(n) < 6:
    raise NoFit(f"L(N, D) has 5 parameters; {len(n)} runs cannot constrain it (need at least 6; an isoFLOP sweep "
                "gives 5-9 per budget)")
  for name, x in (("sizes N", n), ("token counts D", d)):
    if len(np.unique(x)) < 3:
      raise NoFit(f"only {len(np.unique(x))} distinct {name}; need at least 3")
  if abs(np.corrcoef(np.log(n), np.log(d))[0, 1]) > 0.99:
    raise NoFit("N and D vary together (|corr(ln N, ln D)| > 0.99), so the N and D terms cannot be told apart; "
                "train each size for several token counts (isoFLOP budgets or cooldown branches)")


def fit_parametric(params, tokens, loss, *, bootstrap: int = 1000, seed: int = 0,
                   delta: float = HUBER_DELTA) -> ParametricFit:
  """Approach 3 on runs (N params, D tokens, final loss L); intervals from `bootstrap` resamples of the runs.

  Example:
    >>> n = np.repeat(np.logspace(6, 8, 5), 5); d = np.tile(np.logspace(8, 10, 5), 5)
    >>> fit = fit_parametric(n, d, 1.7 + 400 * n ** -0.34 + 410 * d ** -0.28, bootstrap=20)
    >>> round(fit.alpha, 2), round(fit.beta, 2)
    (0.34, 0.28)
  """
  n, d, y = run_columns(params, tokens, loss)
  _check_parametric(n, d)
  log_n, log_d, log_l = np.log(n), np.log(d), np.log(y)
  grid = np.array(list(itertools.product(*(START_GRID[k] for k in ("a", "b", "e", "alpha", "beta")))))
  best_starts = grid[np.argsort(_grid_objectives(grid, log_n, log_d, log_l, delta))[:LBFGS_STARTS]]
  ones = np.ones_like(log_n)
  theta, _ = min((_lbfgs(s, log_n, log_d, log_l, ones, delta) for s in best_starts), key=lambda r: r[1])
  weights = _resample_weights(len(n), bootstrap, np.random.default_rng(seed))
  thetas = _refit(theta, log_n, log_d, log_l, weights, delta) if bootstrap else np.zeros((0, 5))

  def natural(t):  # (a, b, e, alpha, beta) -> E, A, B, alpha, beta
    return np.stack([np.exp(t[..., 2]), np.exp(t[..., 0]), np.exp(t[..., 1]), t[..., 3], t[..., 4]], -1)

  samples = natural(thetas)
  point = natural(theta)
  with np.errstate(divide="ignore", invalid="ignore"):
    a_s = samples[:, 4] / (samples[:, 3] + samples[:, 4])
  cols = dict(E=samples[:, 0], A=samples[:, 1], B=samples[:, 2], alpha=samples[:, 3], beta=samples[:, 4],
              a=a_s, b=1 - a_s)
  return ParametricFit(*map(float, point), intervals={k: interval(v) for k, v in cols.items()}, n_runs=len(n),
                       bootstrap=bootstrap, samples=samples)


# ----------------------------------------------------------------------------------------- approach 2


def budget_groups(flops) -> np.ndarray:
  """A budget index per run: runs whose compute lies within BUDGET_GAP_DECADES of the next (sorted) share one."""
  c = np.log10(np.asarray(flops, np.float64))
  order = np.argsort(c)
  breaks = np.concatenate([[0], np.diff(c[order]) > BUDGET_GAP_DECADES]).cumsum()
  labels = np.empty(len(c), int)
  labels[order] = breaks
  return labels


@dataclasses.dataclass(frozen=True)
class Parabola:
  """Loss at one budget as p2 (ln N)^2 + p1 ln N + p0; its minimum (N*, D*, L*)."""

  flops: float
  coeffs: tuple[float, float, float]
  params_opt: float
  tokens_opt: float
  loss_opt: float
  params_range: tuple[float, float]

  def __call__(self, params):
    return np.polyval(self.coeffs, np.log(np.asarray(params, np.float64)))



def parabola(params, tokens, loss, flops, *, inside: bool = True) -> Parabola:
  """The isoFLOP parabola of one budget's runs; NoFit if it has no minimum (inside the sizes, unless not `inside`)."""
  n, d, y, c = (np.asarray(x, np.float64) for x in (params, tokens, loss, flops))
  sizes = len(np.unique(n))
  if sizes < 3:
    raise NoFit(f"{sizes} distinct sizes at this budget; a parabola needs at least 3 (plan 5-9)")
  x = np.log(n)
  coeffs = np.polyfit(x, y, 2)
  if coeffs[0] <= 0:
    raise NoFit("loss is not convex in ln N at this budget (no minimum); widen the range of sizes")
  x_opt = -coeffs[1] / (2 * coeffs[0])
  if inside and not x.min() <= x_opt <= x.max():
    side = "smallest" if x_opt < x.min() else "largest"
    raise NoFit(f"the minimum lies beyond the {side} size; extend the sizes past it")
  slope, icept = np.polyfit(x, np.log(d), 1)  # ln D is linear in ln N at fixed compute
  return Parabola(flops=float(np.exp(np.mean(np.log(c)))), coeffs=tuple(map(float, coeffs)),
                  params_opt=float(np.exp(x_opt)), tokens_opt=float(np.exp(icept + slope * x_opt)),
                  loss_opt=float(np.polyval(coeffs, x_opt)), params_range=(float(n.min()), float(n.max())))


def _budget_parabolas(n, d, y, c, members, *, inside: bool) -> tuple[list, list[str]]:
  """([(runs, parabola)], reasons for the budgets without one) over `members`, one index array per budget."""
  found, skipped = [], []
  for idx in members:
    try:
      found.append((idx, parabola(n[idx], d[idx], y[idx], c[idx], inside=inside)))
    except NoFit as e:
      skipped.append(f"C ≈ {np.exp(np.mean(np.log(c[idx]))):.3g}: {e}")
  return found, skipped


@dataclasses.dataclass(frozen=True)
class IsoflopFit:
  """Approach 2: the budgets' parabolas and the power laws through their minima, y = k C^p for
  y in (params, tokens, loss); `samples[y]` [bootstrap, 2] holds (ln k, p) per resample."""

  parabolas: list
  skipped: list
  laws: dict  # name -> (k, p)
  samples: dict = dataclasses.field(repr=False)

  @property
  def a(self) -> float:
    return self.laws["params"][1]

  @property
  def b(self) -> float:
    return self.laws["tokens"][1]

  @property
  def intervals(self) -> dict:
    return {"a": interval(self.samples["params"][:, 1]), "b": interval(self.samples["tokens"][:, 1]),
            "loss_exponent": interval(self.samples["loss"][:, 1])}

  def __call__(self, name: str, flops):
    k, p = self.laws[name]
    return k * np.asarray(flops, np.float64) ** p

  def band(self, name: str, flops) -> tuple[np.ndarray, np.ndarray]:
    s = self.samples[name]
    pred = np.exp(s[:, :1] + s[:, 1:] * np.log(np.asarray(flops, np.float64))[None])
    return percentile_bounds(pred, 0, drop_nan=True)

  def to_json(self) -> dict:
    return {"a": self.a, "b": self.b, "loss_exponent": self.laws["loss"][1], "N_coef": self.laws["params"][0],
            "D_coef": self.laws["tokens"][0], "L_coef": self.laws["loss"][0],
            "intervals": {k: list(v) for k, v in self.intervals.items()}, "budgets": len(self.parabolas),
            "skipped": self.skipped}


def _loglog(parabolas: list) -> dict:
  c = np.log([p.flops for p in parabolas])
  out = {}
  for name, attr in (("params", "params_opt"), ("tokens", "tokens_opt"), ("loss", "loss_opt")):
    p, ln_k = np.polyfit(c, np.log([getattr(q, attr) for q in parabolas]), 1)
    out[name] = (float(ln_k), float(p))
  return out


def fit_isoflop(params, tokens, loss, flops, *, bootstrap: int = 1000, seed: int = 0,
                min_budgets: int = 3) -> IsoflopFit:
  """Approach 2 on runs grouped into budgets by compute; each resample redraws every budget's runs.

  Example:
    >>> c = np.repeat([1e15, 1e16, 1e17], 5); n = np.sqrt(c / 120) * np.tile(np.logspace(-0.6, 0.6, 5), 3)
    >>> d = c / (6 * n); fit = fit_isoflop(n, d, 1.7 + 400 * n ** -0.34 + 410 * d ** -0.28, c, bootstrap=20)
    >>> round(fit.a, 2)
    0.45
  """
  n, d, y, c = run_columns(params, tokens, loss, flops)
  groups = budget_groups(c)
  members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
  found, skipped = _budget_parabolas(n, d, y, c, members, inside=True)
  if len(found) < min_budgets:
    why = "; ".join(skipped) or "add budgets"
    raise NoFit(f"{len(found)} of {len(members)} budgets have an isoFLOP minimum, need {min_budgets} ({why})")
  rng = np.random.default_rng(seed)
  samples = {k: np.full((bootstrap, 2), np.nan) for k in ("params", "tokens", "loss")}
  for i in range(bootstrap):
    draw = [rng.choice(m, len(m)) for m, _ in found]
    resampled, _ = _budget_parabolas(n, d, y, c, draw, inside=False)
    if len(resampled) >= 2:
      for k, (ln_k, p) in _loglog([q for _, q in resampled]).items():
        samples[k][i] = ln_k, p
  laws = {k: (float(np.exp(ln_k)), p) for k, (ln_k, p) in _loglog([q for _, q in found]).items()}
  return IsoflopFit(parabolas=[q for _, q in found], skipped=skipped, laws=laws, samples=samples)


# ----------------------------------------------------------------------------------------- synthetic runs

CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al.'s published fit


def synthetic_runs(budgets, sizes: int = 7, *, law: dict = CHINCHILLA, compute_factor: float = 1.0,
                   noise: float = 0.005, spread: float = 0.8, seed: int = 0) -> dict[str, np.ndarray]:
  """An isoFLOP study drawn from a known L(N, D), for checking fits: per budget C, `sizes` sizes spaced evenly
  over +-`spread` decades around the law's N*(C), D = C / 6N, loss = L(N, compute_factor * D) times
  exp(noise * standard normal). compute_factor k makes a variant worth k times the compute.
  Returns {"params", "tokens", "loss", "flops"}, one entry per run."""
  e, big_a, big_b, alpha, beta = (law[k] for k in ("E", "A", "B", "alpha", "beta"))
  g = (alpha * big_a / (beta * big_b)) ** (1 / (alpha + beta))
  c = np.repeat(np.asarray(budgets, np.float64), sizes)
  n = g * (c / 6) ** (beta / (alpha + beta)) * np.tile(np.logspace(-spread, spread, sizes), len(budgets))
  d = c / (6 * n)
  clean = e + big_a * n ** -alpha + big_b * (compute_factor * d) ** -beta
  loss = clean * np.exp(noise * np.random.default_rng(seed).standard_normal(len(c)))
  return {"params": n, "tokens": d, "loss": loss, "flops": c}


# ----------------------------------------------------------------------------------------- command line


def read_runs_csv(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(params, tokens, loss) from a CSV with those columns (any others are ignored)."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  missing = {"params", "tokens", "loss"} - set(rows[0] if rows else ())
  if missing:
    raise ValueError(f"{path} needs the columns params,tokens,loss (missing {', '.join(sorted(missing))})")
  return tuple(np.array([float(r[k]) for r in rows]) for k in ("params", "tokens", "loss"))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m train.scaling", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  fit = sub.add_parser("fit", help="approach 3 on a CSV of params,tokens,loss; one JSON line on stdout")
  fit.add_argument("csv")
  fit.add_argument("--bootstrap", type=int, default=1000, help="resamples of the runs for the intervals")
  fit.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    result = fit_parametric(*read_runs_csv(args.csv), bootstrap=args.bootstrap, seed=args.seed).to_json()
  except NoFit as e:
    print(json.dumps({"no_fit": str(e)}))
    return 1
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
