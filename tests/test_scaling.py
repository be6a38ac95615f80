"""Scaling-law fits (train/scaling.py, train/frontier.py) on synthetic runs from a known L(N, D), the fit CLI,
and isoFLOP planning."""

import functools
import json
import subprocess
import sys

import numpy as np
import pytest

from train import frontier, isoflop, scaling
from train.config import ConfigError

TRUTH = {**scaling.CHINCHILLA, "a": 0.28 / 0.62, "b": 0.34 / 0.62}
BUDGETS = np.logspace(17, 20, 5)


@functools.cache
def _runs(seed: int = 0, compute_factor: float = 1.0) -> dict:
  return scaling.synthetic_runs(BUDGETS, 7, compute_factor=compute_factor, seed=seed)


@functools.cache
def _parametric():
  r = _runs()
  return scaling.fit_parametric(r["params"], r["tokens"], r["loss"], bootstrap=200)


@functools.cache
def _frontier(seed: int, compute_factor: float):
  r = _runs(seed, compute_factor)
  return frontier.fit_frontier(r["flops"], r["loss"], r["params"], r["tokens"], bootstrap=200, seed=seed)


def test_parametric_fit_recovers_the_law_inside_its_intervals():
  fit = _parametric()
  for name, value in TRUTH.items():
    lo, hi = fit.intervals[name]
    assert lo <= value <= hi, (name, value, fit.label())
    assert (hi / lo < 2 if name in ("A", "B") else hi - lo < 0.2 * value), (name, fit.label())  # informative
  assert fit.alpha == pytest.approx(0.34, rel=0.05) and fit.beta == pytest.approx(0.28, rel=0.05)
  assert fit.optimal_params(1e21) == pytest.approx(scaling.synthetic_runs([1e21], 1, spread=0, noise=0)["params"][0],
                                                   rel=0.3)


def test_batched_bootstrap_refit_reaches_the_lbfgs_optimum():
  r = _runs(1)
  log_n, log_d, log_l = np.log(r["params"]), np.log(r["tokens"]), np.log(r["loss"])
  w = np.random.default_rng(0).multinomial(len(log_n), np.full(len(log_n), 1 / len(log_n)), size=3).astype(float)
  start = np.array([np.log(400.0), np.log(400.0), np.log(1.7), 0.3, 0.3])
  batched = scaling._refit(start, log_n, log_d, log_l, w, scaling.HUBER_DELTA)
  for row, theta in zip(w, batched):
    lbfgs, value = scaling._lbfgs(start, log_n, log_d, log_l, row, scaling.HUBER_DELTA)
    assert scaling._huber_objective(theta, log_n, log_d, log_l, row, scaling.HUBER_DELTA)[0] <= value * (1 + 1e-6)
    np.testing.assert_allclose(theta[3:], lbfgs[3:], rtol=1e-3)


def test_isoflop_and_parametric_approaches_agree():
  r = _runs()
  iso = scaling.fit_isoflop(r["params"], r["tokens"], r["loss"], r["flops"], bootstrap=200)
  par = _parametric()
  assert len(iso.parabolas) == len(BUDGETS) and not iso.skipped
  for name in ("a", "b"):
    lo, hi = iso.intervals[name]
    assert lo <= TRUTH[name] <= hi, (name, iso.to_json())
    assert getattr(iso, name) == pytest.approx(getattr(par, name), abs=0.03)
    assert lo <= getattr(par, name) <= hi  # approach 3's estimate lies inside approach 2's interval
  for p in iso.parabolas:  # each budget's minimum is where the law puts it
    assert p.params_opt == pytest.approx(par.optimal_params(p.flops), rel=0.25)


@pytest.mark.parametrize("k", [2.0, 0.5])
def test_variant_at_k_times_compute_has_multiplier_k(k):
  baseline, variant = _frontier(0, 1.0), _frontier(1, k)
  c = np.array([3e17, 3e18, 1e19])
  m, lo, hi = frontier.compute_multiplier(variant, baseline, c)
  np.testing.assert_allclose(m, k, rtol=0.15)
  assert np.all(lo <= k) and np.all(k <= hi), (m, lo, hi)
  same = frontier.compute_multiplier(baseline, baseline, c)[0]
  np.testing.assert_allclose(same, 1.0, rtol=1e-9)


def test_frontier_band_and_predictive_interval_cover_the_truth():
  f = _frontier(0, 1.0)
  truth = scaling.synthetic_runs([3e21], 1, spread=0, noise=0)
  lo, hi = f.band(truth["flops"])
  value, plo, phi = f.predict(truth["flops"])
  assert phi[0] - plo[0] > 0.9 * (hi[0] - lo[0]) > 0  # the predictive interval adds the points' scatter
  assert plo[0] <= truth["loss"][0] <= phi[0] and value[0] == pytest.approx(truth["loss"][0], rel=0.02)
  assert np.isinf(f.compute_for(f.E * 0.99)) and f.compute_for(f(1e19)) == pytest.approx(1e19, rel=1e-9)


def test_fits_refuse_data_that_cannot_constrain_them():
  r = _runs()
  one_budget = r["flops"] == BUDGETS[0]
  with pytest.raises(scaling.NoFit, match="N and D vary together"):
    scaling.fit_parametric(r["params"][one_budget], r["tokens"][one_budget], r["loss"][one_budget], bootstrap=5)
  with pytest.raises(scaling.NoFit, match="need at least 6"):
    scaling.fit_parametric(r["params"][:5], r["tokens"][:5], r["loss"][:5], bootstrap=5)
  two_sizes = np.isin(np.arange(len(r["loss"])) % 7, (0, 6))
  with pytest.raises(scaling.NoFit, match="2 distinct sizes at this budget"):
    scaling.fit_isoflop(*(r[k][two_sizes] for k in ("params", "tokens", "loss", "flops")), bootstrap=5)
  with pytest.raises(scaling.NoFit, match="frontier E \\+ A C\\^-alpha needs at least 4"):
    frontier.fit_frontier(r["flops"][r["flops"] < 2e18], r["loss"][r["flops"] < 2e18], bootstrap=5)
  edge = np.arange(len(r["loss"])) % 7 < 3  # the three smallest sizes: the minimum lies beyond them
  with pytest.raises(scaling.NoFit, match="beyond the largest size"):
    scaling.parabola(*(r[k][edge][:3] for k in ("params", "tokens", "loss", "flops")))


def test_fit_command_prints_one_json_line(tmp_path):
  r = _runs(2)
  path = tmp_path / "runs.csv"
  path.write_text("params,tokens,loss\n" + "".join(f"{n},{d},{y}\n" for n, d, y in
                                                  zip(r["params"], r["tokens"], r["loss"])))
  out = subprocess.run([sys.executable, "-m", "train.scaling", "fit", str(path), "--bootstrap", "20"],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr
  (line,) = out.stdout.splitlines()
  fit = json.loads(line)
  assert {"E", "A", "B", "alpha", "beta", "a", "b"} <= set(fit["intervals"]) <= set(fit)
  assert fit["alpha"] == pytest.approx(0.34, rel=0.1) and fit["n_runs"] == len(r["loss"])
  path.write_text("params,tokens,loss\n1e6,1e8,3.0\n")
  out = subprocess.run([sys.executable, "-m", "train.scaling", "fit", str(path)], capture_output=True, text=True)
  assert out.returncode == 1 and "need at least 6" in json.loads(out.stdout)["no_fit"]


def test_isoflop_plan_spends_each_budget_with_the_models_own_flops():
  from experiments import scaling as study

  config = study.get_config("local,variant=gated_delta_net")
  shapes = study.shapes("local", "gated_delta_net")
  runs = isoflop.plan(config, [1e11, 5e11], shapes, sizes=5)
  assert len(runs) == 10 and len({r.overrides["model.d_model"] for r in runs[:5]}) == 5
  for r in runs:
    s = isoflop.size(isoflop._with(config, r.overrides))
    assert r.flops == pytest.approx(r.budget, rel=0.02) and r.params == s.params
    assert r.flops == pytest.approx(s.flops_per_token * r.tokens, rel=1e-9)
  attention = isoflop.size(study.get_config("local,variant=attention"))
  assert isoflop.size(config).flops_per_token > 1.2 * attention.flops_per_token  # the mixer's own work counts
  with pytest.raises(ConfigError, match="budget 1e\\+09 FLOPs: only 0 of the shapes"):
    isoflop.plan(config, [1e9], shapes, sizes=5)
  with pytest.raises(ConfigError, match="5-9 model sizes"):
    isoflop.plan(config, [1e11], shapes, sizes=3)


def test_sweep_dry_run_lists_params_tokens_and_flops_of_the_plan(capsys, tmp_path):
  from train import sweep

  # An empty root: runs of the same plan in the default root (runs/scaling-local) would list as done.
  assert sweep.main(["--config", "experiments/scaling.py:local", "--root", str(tmp_path), "--dry-run"]) == 0
  out = capsys.readouterr().out
  listed = [line for line in out.splitlines() if line.startswith("new")]
  sizes = [line for line in out.splitlines() if "params," in line]
  assert len(listed) == len(sizes) == 40  # 2 variants x 4 budgets x 5 sizes
  assert sum("(gated_delta_net, swiglu)" in line for line in listed) == 20
  assert sum(line.endswith("; 34,976 params, 3.87e+05 tokens, 1e+11 FLOPs") for line in sizes) == 1, sizes[:5]


def test_fits_refuse_non_finite_or_non_positive_values():
  with pytest.raises(ValueError, match=r"runs \[1\] have a value that is not finite"):
    scaling.fit_parametric([1e6, 2e6, 3e6], [1e8, 1e8, 1e8], [3.0, float("nan"), 2.0])
