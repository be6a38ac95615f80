"""python -m train.report RUNS_DIR [--out DIR]: one table and the plots of a set of runs.

Collects every run (a directory with config.json and metrics.jsonl) under RUNS_DIR, finds the
config keys that differ between runs (the swept keys), and writes:
  runs.csv              one row per run: swept values, final losses/accuracies, params, FLOPs, finished (False:
                        the run stopped before train.steps; the table's n counts such runs as "unfinished")
  stdout                a markdown table grouped by the swept keys (mean ± std over seeds; train loss averaged
                        over the last SMOOTH (>= SMOOTH_MIN) of the logged steps; eval_se: the eval set's own
                        standard error)
  loss_vs_step.png      training (and eval) loss curves per run, the eval set's unigram baseline dashed
  loss_vs_flops.png     the same against cumulative training FLOPs
  scaling section        (train/scaling_report.py) fits on final losses of finished runs whose schedule decayed:
                        a table of fits (approach 2 and 3, frontier, prediction at --target-flops, compute
                        multiplier vs --baseline) and isoflop.png, optimal_allocation.png, frontier.png,
                        multiplier.png where the data constrain them (the notes say why not otherwise)
  seed_spread.png       final eval loss per group: seeds as dots, mean ± std, baseline dashed
  stdout (2nd table)    for runs evaluated at several expert counts (train.eval_top_k, SMoE-Dropout's
                        self-slimming): the final eval loss at each k, grouped like the main table
Variants are the swept keys with non-numeric values (e.g. model.blocks); numeric swept keys
(sizes, lrs) are the points along a variant's curve; `seed` is averaged over.
"""

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from train import metrics as metrics_lib
from train import paths, scaling_report

IGNORED_PREFIXES = ("distributed.", "train.progress", "train.tensorboard", "data.data_dir")
SMOOTH, SMOOTH_MIN = 0.1, 5  # the train loss / accuracy reported: mean over the last 10% of the logged steps
# (at least 5 of them: single text batches differ by tenths of a nat)


def flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and v:
      out.update(flatten(v, key + "."))
    else:
      out[key] = json.dumps(v) if isinstance(v, list | dict) else v
  return out


def collect(root: str) -> list[dict]:
  """Every run directory under root (local or gs://): {"run", "config" (flat), "records"}."""
  runs, top = [], paths.path(root)
  pending = [top]
  while pending:  # a run directory holds no further runs: its checkpoints are not searched
    directory = pending.pop()
    children = list(directory.iterdir())
    if not {"config.json", "metrics.jsonl"} <= {c.name for c in children}:
      pending += [c for c in children if c.is_dir()]
      continue
    records = metrics_lib.read(directory)
    if records:
      runs.append({"run": os.fspath(directory)[len(os.fspath(top)):].strip("/") or ".", "records": records,
                   "config": flatten(json.loads((directory / "config.json").read_text()))})
  return sorted(runs, key=lambda r: r["run"])


def swept_keys(runs: list[dict]) -> list[str]:
  keys = sorted({k for r in runs for k in r["config"]})
  return [k for k in keys if not k.startswith(IGNORED_PREFIXES)
          and len({json.dumps(r["config"].get(k), sort_keys=True) for r in runs}) > 1]


def _last(records: list[dict], key: str):
  for r in reversed(records):
    if key in r and r[key] is not None:
      return r[key]
  return None


def smoothed(records: list[dict], key: str):
  """Mean of `key` over the last SMOOTH (at least SMOOTH_MIN) of the records that log it (one batch is noisy);
  None if none do."""
  vals = [r[key] for r in records if r.get(key) is not None]
  tail = vals[-max(SMOOTH_MIN, round(len(vals) * SMOOTH)):]
  return statistics.fmean(tail) if tail else None


def summarize(run: dict, keys: list[str]) -> dict:
  rec = run["records"]
  steps = rec[-1]["step"]
  flops_per_step = _last(rec, "flops_per_step")
  return {
    "run": run["run"], **{k: run["config"].get(k) for k in keys}, "steps": steps,
    "finished": steps >= run["config"].get("train.steps", steps),
    "loss": smoothed(rec, "loss"), "eval_loss": _last(rec, "eval_loss"), "eval_loss_se": _last(rec, "eval_loss_se"),
    "accuracy": smoothed(rec, "accuracy"), "eval_accuracy": _last(rec, "eval_accuracy"),
    "eval_accuracy_se": _last(rec, "eval_accuracy_se"), "eval_unigram_loss": _last(rec, "eval_unigram_loss"),
    "eval_unigram_accuracy": _last(rec, "eval_unigram_accuracy"),
    "params": _last(rec, "params"), "params_non_embedding": _last(rec, "params_non_embedding"),
    "flops": flops_per_step * steps if flops_per_step else None,
    "tokens_per_sec": _last(rec, "tokens_per_sec"), "decode_state_bytes": _last(rec, "decode_state_bytes"),
  }


def _is_number(v) -> bool:
  return isinstance(v, int | float) and not isinstance(v, bool)


def split_keys(rows: list[dict], keys: list[str]) -> tuple[list[str], list[str]]:
  """(variant keys: non-numeric swept keys, scale keys: numeric ones), seed excluded from both."""
  keys = [k for k in keys if k.split(".")[-1] != "seed"]
  variant = [k for k in keys if not all(_is_number(r[k]) for r in rows)]
  return variant, [k for k in keys if k not in variant]


def variant_label(row: dict, variant: list[str]) -> str:
  return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in variant) or "all runs"


def _fmt(v) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def grouped_markdown(rows: list[dict], keys: list[str]) -> str:
  group_keys = [k for k in keys if k.split(".")[-1] != "seed"]
  groups: dict[tuple, list[dict]] = defaultdict(list)
  for r in rows:
    groups[tuple(json.dumps(r[k]) for k in group_keys)].append(r)
  cols = ["loss", "eval_loss", "accuracy", "eval_accuracy", "params", "flops", "tokens_per_sec"]
  header = [k.split(".")[-1] for k in group_keys] + ["n"] + cols[:4] + ["eval_se"] + cols[4:]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for members in groups.values():
    unfinished = sum(not m["finished"] for m in members)  # their numbers are mid-run, not final
    cells = [_fmt(members[0][k]) for k in group_keys] + [f"{len(members)}" + (f" ({unfinished} unfinished)"
                                                                              if unfinished else "")]
    for c in cols:
      vals = [m[c] for m in members if m[c] is not None]
      if not vals:
        cells.append("-")
      elif len(vals) > 1 and c in ("loss", "eval_loss", "accuracy", "eval_accuracy"):
        cells.append("{:.4g} ± {:.2g}".format(*mean_std(vals)))
      else:
        cells.append(_fmt(statistics.mean(vals)))
      if c == "eval_accuracy":  # the eval set's standard error (mean over the group's runs): loss / accuracy
        ses = [_fmt(statistics.mean(v)) if (v := [m[k] for m in members if m[k] is not None]) else "-"
               for k in ("eval_loss_se", "eval_accuracy_se")]
        cells.append(" / ".join(ses))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def baseline_notes(rows: list[dict]) -> list[str]:
  """One line per distinct eval-set baseline (runs on the same data share one)."""
  seen = dict.fromkeys((r["eval_unigram_loss"], r["eval_unigram_accuracy"]) for r in rows
                       if r["eval_unigram_loss"] is not None)
  return [f"eval set's input-blind baseline (unigram / chance): loss {loss:.4g}, accuracy {acc:.4g}"
          for loss, acc in seen]


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation of a metric over seeds (std 0 for a single value)."""
  vals = list(values)
  return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


TOP_K_LOSS = "eval_loss/top_k="


def top_k_markdown(runs: list[dict], keys: list[str]) -> str | None:
  """Final eval loss at each expert count k (the records' eval_loss/top_k=k), one row per group of the
  swept keys (mean ± std over seeds); None when no run was evaluated at several k."""
  def final(records: list[dict]) -> dict[int, float]:
    last = next((r for r in reversed(records) if any(k.startswith(TOP_K_LOSS) for k in r)), {})
    return {int(k[len(TOP_K_LOSS):]): v for k, v in last.items() if k.startswith(TOP_K_LOSS)}

  finals = [final(run["records"]) for run in runs]
  ks = sorted({k for f in finals for k in f})
  if not ks:
    return None
  group_keys = [k for k in keys if k.split(".")[-1] != "seed"]
  groups: dict[tuple, list[dict]] = defaultdict(list)
  for run, losses in zip(runs, finals):
    if losses:
      groups[tuple(_fmt(run["config"].get(k)) for k in group_keys)].append(losses)
  header = [k.split(".")[-1] for k in group_keys] + ["n"] + [f"k={k}" for k in ks]
  lines = ["eval loss vs active experts k", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for label, members in groups.items():
    cells = [*label, str(len(members))]
    for k in ks:
      vals = [m[k] for m in members if k in m]
      if len(vals) > 1:
        cells.append("{:.4g} ± {:.2g}".format(*mean_std(vals)))
      else:
        cells.append(_fmt(vals[0]) if vals else "-")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def save_figure(fig, path: str) -> str:
  """Write a matplotlib figure as PNG to path (local or gs://) and close it."""
  fig.tight_layout()
  image = io.BytesIO()
  fig.savefig(image, dpi=120, format="png")
  plt.close(fig)
  paths.path(path).write_bytes(image.getvalue())
  return path


def plot_curves(runs: list[dict], rows: list[dict], variant: list[str], out: str) -> list[str]:
  written = []
  for x_key, name, xlabel in (("step", "loss_vs_step.png", "step"),
                              ("flops", "loss_vs_flops.png", "training FLOPs")):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, row in zip(runs, rows):
      rec = run["records"]
      fps = _last(rec, "flops_per_step") or math.nan
      xs = [r["step"] * (fps if x_key == "flops" else 1) for r in rec]
      losses = [r["loss"] for r in rec]
      (line,) = ax.plot(xs, ema(losses), label=f"{variant_label(row, variant)} [{run['run']}]", lw=1)
      ax.plot(xs, losses, color=line.get_color(), lw=0.5, alpha=0.25)
      ev = [(r["step"] * (fps if x_key == "flops" else 1), r["eval_loss"]) for r in rec if "eval_loss" in r]
      if ev:
        ax.scatter(*zip(*ev), s=12, color=line.get_color())
    for loss in dict.fromkeys(r["eval_unigram_loss"] for r in rows if r["eval_unigram_loss"] is not None):
      ax.axhline(loss, color="gray", ls="--", lw=0.8, label=f"eval set's unigram / chance: {loss:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (lines: train, smoothed; dots: eval)")
    if x_key == "flops":
      ax.set_xscale("log")
    ax.set_title(f"loss vs {xlabel}")
    ax.legend(fontsize=6, loc="upper right")
    written.append(save_figure(fig, os.path.join(out, name)))
  return written


def ema(values: list[float], span: int = 10) -> list[float]:
  """Exponential moving average (weight 2 / (span + 1)), debiased at the start as Adam's moments are."""
  out, avg, alpha = [], 0.0, 2.0 / (span + 1)
  for i, v in enumerate(values, 1):
    avg = (1 - alpha) * avg + alpha * v
    out.append(avg / (1 - (1 - alpha) ** i))
  return out


def plot_seed_spread(rows: list[dict], keys: list[str], out: str) -> str | None:
  """Final eval loss per group of the swept keys: each seed a dot, the mean ± std a bar, the eval set's
  unigram / chance loss dashed; None unless some group has several seeds."""
  group_keys = [k for k in keys if k.split(".")[-1] != "seed"]
  groups: dict[str, list[dict]] = defaultdict(list)
  for r in rows:
    groups[variant_label(r, group_keys)].append(r)
  if all(len(m) < 2 for m in groups.values()):
    return None
  metric = "eval_loss"
  fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups)), 4.5))
  for i, members in enumerate(groups.values()):
    vals = [m[metric] for m in members if m[metric] is not None]
    if vals:
      ax.scatter([i] * len(vals), vals, s=10, color="k", zorder=3)
      mean, std = mean_std(vals)
      ax.errorbar([i], [mean], yerr=[std], fmt="o", capsize=4, color="C0")
  base = {r["eval_unigram_loss"] for r in rows} - {None}
  for b in base:
    ax.axhline(b, color="gray", ls="--", lw=0.8, label="unigram / chance")
  ax.set_xticks(range(len(groups)), list(groups), rotation=20, ha="right", fontsize=7)
  ax.set_ylabel("final eval loss")
  ax.set_title("dots: seeds; bars: mean ± std over seeds", fontsize=9)
  if base:
    ax.legend(fontsize=7)
  return save_figure(fig, os.path.join(out, "seed_spread.png"))


def report(root: str, out: str | None = None, *, baseline: str | None = None, target_flops: float | None = None,
           bootstrap: int = 1000) -> dict:
  """Write runs.csv and the plots; returns {"markdown", "top_k_markdown" (None unless runs were evaluated at
  several k), "scaling_markdown" (None without scaling points), "csv", "plots", "notes", "baselines" (the eval
  sets' input-blind scores), "rows"}."""
  runs = collect(root)
  if not runs:
    raise ValueError(f"no runs (directories with config.json and metrics.jsonl) under {root}")
  out = out or root
  paths.path(out).mkdir(parents=True, exist_ok=True)
  keys = swept_keys(runs)
  rows = [summarize(r, keys) for r in runs]
  variant, _ = split_keys(rows, keys)
  csv_path = os.path.join(out, "runs.csv")
  table = io.StringIO(newline="")
  writer = csv.DictWriter(table, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  paths.path(csv_path).write_text(table.getvalue())
  plots = plot_curves(runs, rows, variant, out)
  plots += [p for p in (plot_seed_spread(rows, keys, out),) if p]
  # --- scaling section (train/scaling_report.py): fits on honest final points, their table and plots
  scaling = scaling_report.section(runs, rows, variant, lambda fig, name: save_figure(fig, os.path.join(out, name)),
                                   baseline=baseline, target_flops=target_flops, bootstrap=bootstrap)
  plots += scaling["plots"]
  # ---
  return {"markdown": grouped_markdown(rows, keys), "top_k_markdown": top_k_markdown(runs, keys), "csv": csv_path,
          "scaling_markdown": scaling["markdown"], "plots": plots, "notes": scaling["notes"],
          "baselines": baseline_notes(rows), "rows": rows}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m train.report", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("runs_dir")
  parser.add_argument("--out", default=None, help="where to write runs.csv and plots (default RUNS_DIR)")
  parser.add_argument("--baseline", default=None, help="the variant compute multipliers are against (a substring "
                      "of its label, e.g. attention; default: the first variant with a frontier)")
  parser.add_argument("--target-flops", type=float, default=None, help="extrapolate frontiers and multipliers to "
                      "this compute (default: the largest run's)")
  parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of the runs for the fits' intervals")
  args = parser.parse_args(argv)
  try:
    result = report(args.runs_dir, args.out, baseline=args.baseline, target_flops=args.target_flops,
                    bootstrap=args.bootstrap)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(result["markdown"])
  if result["top_k_markdown"]:
    print("\n" + result["top_k_markdown"])
  if result["scaling_markdown"]:
    print("\n" + result["scaling_markdown"])
  for note in result["baselines"] + result["notes"]:
    print(note)
  print(f"\nwrote {result['csv']} and {', '.join(result['plots'])}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
