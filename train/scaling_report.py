"""The scaling section of `python -m train.report`: train/scaling.py's and train/frontier.py's fits on a sweep's
honest points, a table and the plots (isoFLOP parabolas with their minima, N*(C) and D*(C), frontiers with
bands and extrapolation, compute multipliers).

A point is a run's final loss (eval loss where it has one) with its parameters N, tokens D and analytic FLOPs C,
and only if its schedule ended there: finished runs with a decaying schedule (cosine, or WSD: a cooldown branch
of train/cooldowns.py is one). Unfinished runs and constant-lr runs are left out, and so is every mid-run
evaluation. Seeds are averaged per (variant, N, D, C) first; the bootstrap resamples those means. A variant is a
run's layer types (its block pattern with the repeat counts removed, so depth is size, not variant) plus any
other non-numeric swept key.
"""

import dataclasses
import math
import statistics
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from models.block_pattern import parse_groups
from train import scaling
from train.frontier import Frontier, compute_multiplier, fit_frontier

DECAYING = ("cosine", "wsd")
NOT_VARIANT = ("model.blocks", "optim.schedule", "optim.decay_shape")  # cosine runs and cooldown branches pool


@dataclasses.dataclass
class Variant:
  """A variant's seed-mean points (N, D, C, L) and its fits (None where the data cannot constrain one)."""

  label: str
  params: np.ndarray
  tokens: np.ndarray
  flops: np.ndarray
  loss: np.ndarray
  seeds: list
  parametric: scaling.ParametricFit | None = None
  isoflop: scaling.IsoflopFit | None = None
  frontier: Frontier | None = None


def layer_types(blocks: str) -> str:
  """'(gla, swiglu) * 4' -> '(gla, swiglu)'; '((a, s) + (b, s)) * 6' -> '(a, s) + (b, s)'."""
  try:
    groups = parse_groups(blocks)
  except ValueError:
    return blocks
  return " + ".join(" + ".join(f"({m}, {f})" for m, f in unit) for unit, _ in groups)


def points(runs: list[dict], rows: list[dict], variant_keys: list[str]) -> tuple[dict, list[str]]:
  """({variant label: Variant}, notes on runs left out and on seeds)."""
  notes, grouped = [], defaultdict(list)
  for run, row in zip(runs, rows):
    cfg = run["config"]
    final = row["eval_loss"] if row["eval_loss"] is not None else row["loss"]
    if cfg.get("model.kind", "lm") != "lm" or not row["flops"] or not row["params"] or final is None:
      continue
    if not math.isfinite(final):
      notes.append(f"{run['run']}: final loss {final}; not a point")
      continue
    if row["steps"] != cfg.get("train.steps"):
      notes.append(f"{run['run']}: unfinished ({row['steps']} of {cfg.get('train.steps')} steps); not a point")
      continue
    if cfg.get("optim.schedule") not in DECAYING:
      notes.append(f"{run['run']}: optim.schedule={cfg.get('optim.schedule')!r} ends without a decay; not a point "
                   "(branch it with python -m train.cooldowns)")
      continue
    label = ", ".join([layer_types(str(cfg.get("model.blocks", "")))] + [
      f"{k.split('.')[-1]}={row[k]}" for k in variant_keys if k not in NOT_VARIANT])
    tokens = row["steps"] * cfg["data.batch_size"] * cfg["data.seq_len"]
    grouped[(label, row["params"], tokens, float(f"{row['flops']:.6g}"))].append(final)
  variants: dict[str, list] = defaultdict(list)
  for (label, n, d, c), losses in grouped.items():
    variants[label].append((n, d, c, statistics.mean(losses), len(losses)))
  out = {}
  for label, pts in sorted(variants.items()):
    n, d, c, y, seeds = (np.array(v) for v in zip(*pts))
    out[label] = Variant(label, n, d, c, y, list(seeds))
    if seeds.max() == 1:
      notes.append(f"{label}: one seed per point; the intervals do not include seed-to-seed variation "
                   "(add seeds to the sweep)")
  return out, notes


def fit(variants: dict, *, bootstrap: int, seed: int = 0) -> list[str]:
  """Fit every variant in place; the reasons for the fits the data cannot constrain."""
  notes = []
  for v in variants.values():
    for attr, name, call, args in (
        ("parametric", "approach 3", scaling.fit_parametric, (v.params, v.tokens, v.loss)),
        ("isoflop", "isoFLOP", scaling.fit_isoflop, (v.params, v.tokens, v.loss, v.flops)),
        ("frontier", "frontier", fit_frontier, (v.flops, v.loss, v.params, v.tokens))):
      try:
        setattr(v, attr, call(*args, bootstrap=bootstrap, seed=seed))
      except scaling.NoFit as e:
        notes.append(f"{v.label}: no {name} fit: {e}")
    notes += [f"{v.label}: isoFLOP budget left out, {why}" for why in (v.isoflop.skipped if v.isoflop else [])]
  return notes


def _iv(value: float, lo: float, hi: float, fmt: str = ".3g") -> str:
  return f"{value:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def pick_baseline(variants: dict, baseline: str | None) -> str | None:
  """The variant whose label contains `baseline` (None: the first variant with a frontier)."""
  with_frontier = [k for k, v in variants.items() if v.frontier is not None]
  if baseline is None:
    return with_frontier[0] if with_frontier else None
  matches = [k for k in variants if baseline in k]
  if len(matches) != 1:
    raise ValueError(f"--baseline {baseline!r} matches {len(matches)} variants ({', '.join(variants)}); "
                     "give a substring of exactly one")
  return matches[0]


def markdown(variants: dict, baseline: str | None, target_flops: float | None) -> str:
  """One row per variant: points, seeds, approach 2 and 3 exponents, E, frontier, prediction, multiplier."""
  target = target_flops or max((float(v.flops.max()) for v in variants.values()), default=math.nan)
  base = variants.get(baseline) if baseline else None
  header = ["variant", "points", "seeds", "a (isoFLOP)", "a (L(N,D))", "alpha", "beta", "E", "frontier alpha",
            f"L at C={target:.3g}", f"x compute of {baseline or '-'} at C={target:.3g}"]
  lines = [f"scaling fits ({100 * scaling.CONFIDENCE:.0f}% bootstrap intervals over runs; '-': not constrained, "
           "see the notes)", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for v in variants.values():
    p, i, f = v.parametric, v.isoflop, v.frontier
    cells = [v.label, str(len(v.loss)), f"{min(v.seeds)}-{max(v.seeds)}" if min(v.seeds) != max(v.seeds)
             else str(v.seeds[0]),
             _iv(i.a, *i.intervals["a"]) if i else "-"]
    cells += [_iv(getattr(p, k), *p.intervals[k]) for k in ("a", "alpha", "beta", "E")] if p else ["-"] * 4
    if f:
      value, lo, hi = f.predict(target)
      cells += [_iv(f.alpha, *f.intervals["alpha"]), f"{value[0]:.4g} [{lo[0]:.4g}, {hi[0]:.4g}] (predictive)"]
    else:
      cells += ["-", "-"]
    if f and base is not None and base.frontier is not None and base is not v:
      m, lo, hi = compute_multiplier(f, base.frontier, target)
      cells.append(f"{m[0]:.3g} [{lo[0]:.3g}, {hi[0]:.3g}]")
    else:
      cells.append("-")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _colours(variants: dict) -> dict:
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  return {k: cycle[i % len(cycle)] for i, k in enumerate(variants)}


STYLES = ("-", "--", ":", "-.")


def _finish(ax, title: str, reference: float | None = None, label: str = "") -> None:
  if reference is not None:
    ax.axhline(reference, color="grey", lw=0.8, ls=":", label=label)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def plot_isoflop(variants: dict, save, reference=None) -> str | None:
  """Loss vs N per budget: the points, each budget's parabola (line style by budget) and its minimum (star)."""
  fitted = {k: v for k, v in variants.items() if v.isoflop is not None}
  if not fitted:
    return None
  fig, ax = plt.subplots(figsize=(8.5, 4.5))
  colours = _colours(variants)
  for label, v in fitted.items():
    ax.scatter(v.params, v.loss, s=10, color=colours[label], alpha=0.6)
    for j, p in enumerate(v.isoflop.parabolas):
      grid = np.geomspace(*p.params_range, 50)
      ax.plot(grid, p(grid), color=colours[label], ls=STYLES[j % len(STYLES)], lw=1,
              label=f"{label}, C={p.flops:.2g}")
      ax.plot([p.params_opt], [p.loss_opt], marker="*", ms=9, color=colours[label])
  ax.set_xscale("log")
  ax.set_xlabel("parameters N")
  ax.set_ylabel("final loss")
  _finish(ax, "isoFLOP curves (stars: each budget's minimum)", *reference or ())
  return save(fig, "isoflop.png")


def plot_allocation(variants: dict, save) -> str | None:
  """N*(C) and D*(C): the isoFLOP minima and the power laws through them, with bootstrap bands."""
  fitted = {k: v for k, v in variants.items() if v.isoflop is not None}
  if not fitted:
    return None
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
  colours = _colours(variants)
  for ax, name, attr, ylabel in ((axes[0], "params", "params_opt", "N*(C)"),
                                 (axes[1], "tokens", "tokens_opt", "D*(C)")):
    for label, v in fitted.items():
      i = v.isoflop
      cs = np.array([p.flops for p in i.parabolas])
      grid = np.geomspace(cs.min() / 3, cs.max() * 3, 50)
      lo, hi = i.band(name, grid)
      exponent = i.laws[name][1]
      ax.scatter(cs, [getattr(p, attr) for p in i.parabolas], color=colours[label], s=14)
      ax.plot(grid, i(name, grid), color=colours[label], lw=1.2, label=f"{label}: ∝ C^{exponent:.2f}")
      ax.fill_between(grid, lo, hi, color=colours[label], alpha=0.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(ylabel)
    _finish(ax, f"compute-optimal {ylabel} (isoFLOP minima)")
  return save(fig, "optimal_allocation.png")


def plot_frontiers(variants: dict, save, target_flops: float | None, reference=None) -> str | None:
  """Every point, each variant's frontier fit with its band over the data, extrapolated (dashed) to the target
  with the predictive interval there."""
  fitted = {k: v for k, v in variants.items() if v.frontier is not None}
  if not fitted:  # no variant's points constrain a frontier: the report's table compares them, no plot claims a fit
    return None
  fig, ax = plt.subplots(figsize=(8.5, 4.5))
  colours = _colours(variants)
  for label, v in variants.items():
    ax.scatter(v.flops, v.loss, s=8, alpha=0.4, color=colours[label], label=f"{label}: runs")
  for label, f in ((k, v.frontier) for k, v in fitted.items()):
    ax.scatter(f.flops, f.loss, s=30, marker="D", facecolors="none", edgecolors=colours[label])
    grid = np.geomspace(f.flops.min(), f.flops.max(), 60)
    lo, hi = f.band(grid)
    ax.plot(grid, f(grid), color=colours[label], lw=1.4, label=f"{label}: α={f.alpha:.3f}")
    ax.fill_between(grid, lo, hi, color=colours[label], alpha=0.2)
    if target_flops and target_flops > f.flops.max():
      ext = np.geomspace(f.flops.max(), target_flops, 30)
      lo, hi = f.band(ext)
      ax.plot(ext, f(ext), color=colours[label], lw=1.2, ls="--")
      ax.fill_between(ext, lo, hi, color=colours[label], alpha=0.1)
      value, plo, phi = f.predict(target_flops)
      ax.errorbar([target_flops], value, yerr=[value - plo, phi - value], color=colours[label], capsize=3, fmt="o")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("training compute C (FLOPs)")
  ax.set_ylabel("final loss")
  _finish(ax, "frontiers L(C) = E + A·C^-α: diamonds compute-optimal points, band 95% bootstrap,\n"
          "dashed extrapolation, bar predictive interval", *reference or ())
  return save(fig, "frontier.png")


def plot_multiplier(variants: dict, baseline: str | None, save, target_flops: float | None) -> str | None:
  """Each variant's compute multiplier against the baseline as a function of C, with its interval."""
  base = variants.get(baseline) if baseline else None
  others = {k: v for k, v in variants.items() if v.frontier is not None and v is not base}
  if base is None or base.frontier is None or not others:
    return None
  fig, ax = plt.subplots(figsize=(8.5, 4.2))
  colours = _colours(variants)
  for label, v in others.items():
    hi_c = max(v.flops.max(), target_flops or 0)
    grid = np.geomspace(v.flops.min(), hi_c, 60)
    m, lo, hi = compute_multiplier(v.frontier, base.frontier, grid)
    ax.plot(grid, m, color=colours[label], lw=1.4, label=label)
    ax.fill_between(grid, lo, np.minimum(hi, 1e6), color=colours[label], alpha=0.2)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("training compute C (FLOPs)")
  ax.set_ylabel(f"compute multiplier vs {baseline}")
  _finish(ax, f"compute {baseline} needs for each variant's loss / the variant's compute\n(> 1: the variant is "
          "worth more compute; band 95% bootstrap)", 1.0, "equal compute")
  return save(fig, "multiplier.png")


TEXT_SOURCES = ("text", "tfds_text")


def reference_line(runs: list[dict], rows: list[dict]) -> tuple[float, str] | None:
  """The loss an input-blind model reaches: chance for MQAR (ln vocab_size) when every run is MQAR with one
  vocabulary; for text, the eval set's unigram entropy (the runs' logged eval_unigram_loss) when every run is
  text and all runs logged the same value (the same eval set); None otherwise."""
  names = {r["config"].get("data.name") for r in runs}
  if names == {"mqar"}:
    vocab = {r["config"].get("data.vocab_size") for r in runs}
    if len(vocab) == 1:
      v = vocab.pop()
      return math.log(v), f"chance: ln {v}"
  if names <= set(TEXT_SOURCES):
    entropies = {row["eval_unigram_loss"] for row in rows}
    if len(entropies) == 1 and None not in entropies:
      h = entropies.pop()
      return h, f"eval set's unigram entropy: {h:.3g}"
  return None


def section(runs: list[dict], rows: list[dict], variant_keys: list[str], save, *, baseline: str | None = None,
            target_flops: float | None = None, bootstrap: int = 1000) -> dict:
  """{"markdown", "plots", "notes"} of the scaling section; `save(fig, name) -> path` writes a figure."""
  variants, notes = points(runs, rows, variant_keys)
  if not variants:
    return {"markdown": None, "plots": [], "notes": notes}
  if all(len(v.flops) == 1 for v in variants.values()):  # a comparison at one size: nothing to fit, say so once
    return {"markdown": None, "plots": [], "notes": [
      *notes, "no scaling fits: each variant was run at one size and budget (a comparison; a scaling sweep such as "
      "experiments/scaling.py runs several)"]}
  notes += fit(variants, bootstrap=bootstrap)
  base = pick_baseline(variants, baseline)
  reference = reference_line(runs, rows)
  plots = [plot_isoflop(variants, save, reference), plot_allocation(variants, save),
           plot_frontiers(variants, save, target_flops, reference),
           plot_multiplier(variants, base, save, target_flops)]
  return {"markdown": markdown(variants, base, target_flops), "plots": [p for p in plots if p], "notes": notes,
          "variants": variants}
