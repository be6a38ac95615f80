"""MQAR recall study as Zoology (Arora et al. 2023) runs it: which token mixers can recall key-value pairs?

Two-layer LMs (mixer + SwiGLU per layer) are trained on multi-query associative recall (the data laid out
as Zoology's: answers are targets only) and scored by answer accuracy on a fixed eval set, for every mixer
x model width x number of key-value pairs; as in Zoology, each (mixer, width, pairs) cell sweeps the
learning rate and reports its best run (mean ± std over seeds). Softmax attention is the reference; the
recurrent mixers squeeze all pairs into a fixed state (H x K x V per layer), so their accuracy falls as
pairs grow and rises with width. `attention_kv_shift` is softmax attention with FoX's KV-shift (each
key / value mixed with its predecessor, a learned 2-tap short convolution): it separates "needs an
induction mechanism" (which a short conv gives for free, as the delta-rule mixers have) from "needs a
big state" (which attention has).

Paper-like scale (GPU / TPU; vocab 8192, 512 tokens, up to 128 pairs, widths 64..512, Zoology's lrs
1e-4..1e-2), as cluster launch scripts, then the tables from the finished runs:
  python -m train.sweep --config experiments/mqar_study.py --emit slurm
  python -m experiments.mqar_study --scale paper
Local (2 CPU cores; vocab 32, 32 tokens, batch 32, 3000 steps with 10% warm-up, eval on 1024 held-out
sequences): the whole grid is 14 mixers x 3 widths x 3 pair counts x 3 lrs x 2 seeds (756 runs); the
subset measured below:
  nice -n 10 python -m experiments.mqar_study --mixers attention,attention_kv_shift --widths 64 --pairs 4 \\
    --lrs 3e-3,1e-2 --seeds 0
One run through the shared CLI:
  python -m train --config experiments/mqar_study.py:local,mixer=attention,width=64,pairs=4,lr=3e-3 \\
    --workdir runs/mqar/x
Writes <root>/mqar_study.{json,md} (best lr per cell, mean ± std over seeds, eval standard error),
mqar_study.png (accuracy vs width, one panel per number of pairs, chance dashed) and mqar_curves.png
(answer accuracy vs step of each cell's best lr), next to train.report's table and plots.

Measured locally (d=64, 4 pairs, seed 0, 3000 steps, eval on 1024 held-out sequences ± its standard error;
16 min a run, two at a time, on 2 CPU cores at load average ~36): softmax attention 0.999 ± 0.0005 at lr 3e-3
(0.973 at step 1500) but 0.244 ± 0.007 at lr 1e-2, with eval loss 1.39 = ln 4: it knows the answer is one
of the 4 context values and recalls nothing (chance: 0.067, ln 16). Attention + KV-shift at lr 3e-3: 1.000
(all 4096 answers) at its first eval, step 600 (the run was stopped there for CPU), with training accuracy
1.0 from step 120: given the previous token, attention recalls at once; plain attention's slow start is
the induction mechanism it must learn, not its state (its curve, mqar_curves.png, sits near 0.25, a guess
among the 4 context values, until step ~900, then climbs to 0.9 by step 1300).
Linear attention vs Gated DeltaNet on this cell: experiments/quickstart.py (2000 steps). The rest of the
grid was not run on the fixed data; experiments/RESULTS.md keeps the record.
Before the fix (answers written into the input after each query key, unlike Zoology), attention stalled
at 0.57 on 4 pairs (4000 steps at lr 1e-3 and 3e-3: 0.570, 0.568) while DeltaNet reached 1.00: it had
learned elimination (per query 0.32 / 0.40 / 0.58 / 1.00, against the 1/4, 1/3, 1/2, 1 that answering
"the context value not yet repeated" gives), not recall. That, not a too-small budget alone, misordered
the study. The learning rate matters as much as Zoology's sweep implies: at 1e-3 attention was at 0.31
after 2000 steps.
Expect (Zoology Fig. 2, Gated DeltaNet paper): attention ~1.0 everywhere; delta-rule mixers (DeltaNet,
Gated DeltaNet) next; GLA and RetNet below them; plain linear attention weakest at small width / many pairs.
At this local scale the delta-rule mixers learn faster than attention (their short convolutions hand
them the previous token, the induction step attention must learn): a budget that stops early ranks them
above attention, an ordering of learning speed, not of capacity.
"""

import argparse
import json
import os
import statistics
from collections import defaultdict

from experiments import common
from train import report

# attention_kv_shift: a label in model.options (softmax attention with RoPE and FoX's KV-shift, no forget gate)
OPTIONS = {"attention_kv_shift": dict(layer="forgetting_attention", forget_gate=False, kv_shift=True,
                                      rope_theta=10000.0)}
MIXERS = ("attention", "attention_kv_shift", "linear_attention", "retnet", "gla", "delta_net", "gated_delta_net",
          "norm_attention", "lightning_attention", "nala", "kda", "gated_deltaproduct", "rwkv7",
          "forgetting_attention")
SCALES = {  # vocab, seq_len, train steps, batch, eval sequences, default widths, pair counts and lrs
  "local": dict(vocab_size=32, seq_len=32, steps=3000, batch_size=32, eval_examples=1024, widths=(32, 64, 128),
                pairs=(2, 4, 8), lrs=(1e-3, 3e-3, 1e-2), seeds=common.LOCAL_SEEDS),
  "paper": dict(vocab_size=8192, seq_len=512, steps=20000, batch_size=256, eval_examples=3072,
                widths=(64, 128, 256, 512), pairs=(32, 64, 128), lrs=(1e-4, 4.6e-4, 2.2e-3, 1e-2), seeds=(0,)),
}
GRID = ("mixers", "widths", "pairs", "lrs", "seeds")  # --<name> / grid_<name>=a+b selects part of a scale's grid


def _arg(arg: str | None):
  return common.parse_arg(arg, mixer="gated_delta_net", width=64, pairs=16, heads=2, lr=1e-3, local=False,
                          **{f"grid_{g}": "" for g in GRID})


def grid(arg: str | None) -> dict[str, tuple]:
  """The scale's grid ({"mixers", "widths", "pairs", "lrs", "seeds"}), narrowed by grid_<name>=a+b in ARG."""
  a = _arg(arg)
  s = SCALES["local" if a.local else "paper"]
  out = {"mixers": MIXERS, **{g: s[g] for g in GRID[1:]}}
  for g in list(out):
    chosen = a[f"grid_{g}"]
    if chosen:
      kind = str if g == "mixers" else float if g == "lrs" else int
      out[g] = tuple(kind(v) for v in chosen.split("+"))
      unknown = set(out[g]) - set(MIXERS) if g == "mixers" else set()
      if unknown:
        raise ValueError(f"grid_mixers has {sorted(unknown)}; known mixers: {MIXERS}")
  return out


def get_config(arg: str | None = None):
  arg = _arg(arg)
  if arg.mixer not in MIXERS:
    raise ValueError(f"mixer must be one of {MIXERS}, got {arg.mixer!r}")
  s = SCALES["local" if arg.local else "paper"]
  c = common.lm_config("tiny")
  common.mqar_data(c, vocab_size=s["vocab_size"], num_pairs=arg.pairs, seq_len=s["seq_len"])
  c.data.eval_examples = s["eval_examples"]
  c.model.update(dict(d_model=arg.width, n_heads=arg.heads, d_ff=2 * arg.width))
  c.model.blocks = common.blocks(arg.mixer, "swiglu", 2)
  c.model.options = OPTIONS
  c.data.batch_size = s["batch_size"]
  c.optim.update(common.adamw(lr=arg.lr, warmup=s["steps"] // 10, weight_decay=0.0))
  c.train.update(dict(steps=s["steps"], log_every=20, eval_every=s["steps"] // 10,
                      eval_steps=s["eval_examples"] // s["batch_size"], ckpt_every=s["steps"], progress=False,
                      tensorboard=False))
  return c


def sweep(add, arg: str | None = None):
  """Every mixer x width x pairs x lr x seed of the scale ARG names (":local" or the paper's), or the part
  grid_<name>=a+b selects."""
  g = grid(arg)
  for mixer in g["mixers"]:
    for width in g["widths"]:
      for pairs in g["pairs"]:
        for lr in g["lrs"]:
          for seed in g["seeds"]:
            add(**{"model.blocks": common.blocks(mixer, "swiglu", 2), "model.d_model": width,
                   "model.d_ff": 2 * width, "data.num_pairs": pairs, "optim.lr": lr, "seed": seed})


def study_rows(runs: list[dict]) -> list[dict]:
  """train.report.collect runs -> {mixer (read off the block pattern), width, pairs, lr, seed, eval_accuracy,
  eval_accuracy_se, chance, curve [(step, train accuracy, smoothed)]}. The training examples are fresh
  (100k of them, fewer than a local run draws), so the train accuracy tracks the held-out one."""
  rows = []
  for run in runs:
    c, evals = run["config"], [r for r in run["records"] if r.get("eval_accuracy") is not None]
    if not evals:
      continue
    rows.append({"mixer": c["model.blocks"].split(",")[0].strip("( "), "width": c["model.d_model"],
                 "pairs": c["data.num_pairs"], "lr": c["optim.lr"], "seed": c.get("seed", 0),
                 "eval_accuracy": evals[-1]["eval_accuracy"], "eval_accuracy_se": evals[-1].get("eval_accuracy_se"),
                 "chance": evals[-1].get("eval_unigram_accuracy"),
                 "curve": list(zip([r["step"] for r in run["records"]],
                                   report.ema([r["accuracy"] for r in run["records"]])))})
  return rows


def best(rows: list[dict]) -> list[dict]:
  """Per (mixer, width, pairs): the lr with the highest seed-mean final accuracy, as {mixer, width, pairs, lr,
  n (seeds), mean, std (over seeds; 0 for one), se (mean eval standard error), chance, curve (seed mean)}."""
  by_lr: dict[tuple, list[dict]] = defaultdict(list)
  for r in rows:
    by_lr[(r["mixer"], r["width"], r["pairs"], r["lr"])].append(r)
  cells: dict[tuple, dict] = {}
  for (mixer, width, pairs, lr), members in by_lr.items():
    accs = [m["eval_accuracy"] for m in members]
    ses = [m["eval_accuracy_se"] for m in members if m["eval_accuracy_se"] is not None]
    steps = sorted(set.intersection(*(set(s for s, _ in m["curve"]) for m in members)))
    curve = [(s, statistics.fmean(dict(m["curve"])[s] for m in members)) for s in steps]
    cell = {"mixer": mixer, "width": width, "pairs": pairs, "lr": lr, "n": len(accs), "mean": statistics.fmean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "se": statistics.fmean(ses) if ses else None,
            "chance": members[0]["chance"], "curve": curve}
    key = (mixer, width, pairs)
    if key not in cells or cell["mean"] > cells[key]["mean"]:
      cells[key] = cell
  return list(cells.values())


def table(cells: list[dict], widths, pairs) -> str:
  """Markdown: one row per (mixer, pairs), one column per width; cells = best-lr accuracy mean ± std (lr)."""
  by = {(c["mixer"], c["width"], c["pairs"]): c for c in cells}
  lines = ["mixer | pairs | " + " | ".join(f"d={w}" for w in widths), "---|---|" + "---|" * len(widths)]
  for mixer in dict.fromkeys(c["mixer"] for c in cells):
    for p in pairs:
      found = [by.get((mixer, w, p)) for w in widths]
      if any(found):
        lines.append(f"{mixer} | {p} | " + " | ".join(
          "-" if c is None else f"{c['mean']:.3f} ± {c['std']:.3f} (lr {c['lr']:.0e}, n={c['n']})" for c in found))
  se = [c["se"] for c in cells if c["se"] is not None]
  if se:
    lines.append(f"\neval standard error of one run's accuracy: {min(se):.4f}..{max(se):.4f}")
  return "\n".join(lines)


def _chance(ax, cells) -> None:
  chance = [c["chance"] for c in cells if c["chance"] is not None]
  if chance:
    ax.axhline(statistics.fmean(chance), color="gray", ls="--", lw=0.8, label="chance")


def plot(cells: list[dict], widths, pairs, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.5), sharey=True, squeeze=False)
  for ax, p in zip(axes[0], pairs):
    for mixer in dict.fromkeys(c["mixer"] for c in cells):
      pts = sorted((c["width"], c["mean"], c["std"]) for c in cells if c["mixer"] == mixer and c["pairs"] == p)
      if pts:
        ax.errorbar(*zip(*[(w, m) for w, m, _ in pts]), yerr=[s for _, _, s in pts], marker="o", capsize=2,
                    label=mixer)
    _chance(ax, cells)
    ax.set_ylim(0.0, 1.02)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(widths), [str(w) for w in widths])
    ax.set_title(f"{p} key-value pairs (best lr per point)")
    ax.set_xlabel("model width")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("MQAR answer accuracy")
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_curves(cells: list[dict], pairs, path: str) -> None:
  """Train answer accuracy (smoothed) vs step of each cell's best lr (seed mean), one panel per number of pairs."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.5), sharey=True, squeeze=False)
  for ax, p in zip(axes[0], pairs):
    for c in sorted((c for c in cells if c["pairs"] == p), key=lambda c: (c["mixer"], c["width"])):
      ax.plot(*zip(*c["curve"]), marker=".", label=f"{c['mixer']} d={c['width']} lr={c['lr']:.0e}")
    _chance(ax, cells)
    ax.set_ylim(0.0, 1.02)
    ax.set_title(f"{p} key-value pairs")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("MQAR answer accuracy (train, smoothed)")
  axes[0][-1].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_state_size(root: str) -> str | None:
  """<root>/mqar_accuracy.png: answer accuracy vs decoding-state size (KV cache or recurrent state, bytes per
  sequence) per variant of the MQAR runs under root (the swept keys but width); vs model width when a run did
  not log its state size. None without MQAR runs."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = report.collect(root)
  keys = report.swept_keys(runs)
  rows = [report.summarize(r, keys) for r in runs]
  variant, _ = report.split_keys(rows, keys)
  by_state = all(row["decode_state_bytes"] for row in rows)
  points: dict[str, list[tuple]] = defaultdict(list)
  for run, row in zip(runs, rows):
    acc = row["eval_accuracy"] if row["eval_accuracy"] is not None else row["accuracy"]
    if run["config"].get("data.name") == "mqar" and acc is not None:
      label = report.variant_label(row, [k for k in variant if k != "model.d_model"])
      x = row["decode_state_bytes"] if by_state else run["config"].get("model.d_model")
      points[label].append((x, acc))
  if not points:
    return None
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for label, pts in sorted(points.items()):
    ax.plot(*zip(*sorted(pts)), marker="o", label=label)
  for chance in sorted({r["eval_unigram_accuracy"] for r in rows if r["eval_unigram_accuracy"] is not None}):
    ax.axhline(chance, color="gray", ls="--", lw=0.8, label=f"chance {chance:.3g}")
  ax.set_xscale("log", base=2)
  ax.set_ylim(-0.02, 1.02)
  xlabel = "decoding state per sequence (bytes)" if by_state else "model width d_model"
  ax.set_xlabel(xlabel)
  ax.set_ylabel("MQAR answer accuracy")
  ax.set_title(f"MQAR accuracy vs {xlabel.split(' (')[0]}")
  ax.legend(fontsize=6)
  return report.save_figure(fig, os.path.join(root, "mqar_accuracy.png"))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Run the MQAR grid (train.sweep), then write its tables + plots.")
  parser.add_argument("--scale", choices=sorted(SCALES), default="local")
  parser.add_argument("--root", default=None, help="sweep root (default runs/mqar_study[-local])")
  parser.add_argument("--parallel", type=int, default=1)
  for g in GRID:
    parser.add_argument(f"--{g}", default="", help=f"comma-separated subset of the scale's {g} (default: all)")
  args = parser.parse_args(argv)
  from train import sweep as sweep_lib

  arg = ",".join(filter(None, ["local" if args.scale == "local" else ""]
                        + [f"grid_{g}={getattr(args, g).replace(',', '+')}" for g in GRID if getattr(args, g)]))
  spec = "experiments/mqar_study.py" + (f":{arg}" if arg else "")
  root = args.root or sweep_lib.default_root("experiments/mqar_study.py" + (":local" if args.scale == "local" else ""))
  if sweep_lib.main(["--config", spec, "--root", root, "--parallel", str(args.parallel)]):
    raise SystemExit(f"some MQAR runs failed; see {root}/*/log.txt")
  report.report(root)
  g = grid(arg)
  cells = best(study_rows(report.collect(root)))
  widths = [w for w in g["widths"] if any(c["width"] == w for c in cells)]
  pairs = [p for p in g["pairs"] if any(c["pairs"] == p for c in cells)]
  with open(os.path.join(root, "mqar_study.json"), "w") as f:
    json.dump(cells, f, indent=1)
  text = table(cells, widths, pairs)
  with open(os.path.join(root, "mqar_study.md"), "w") as f:
    f.write(text + "\n")
  plot(cells, widths, pairs, os.path.join(root, "mqar_study.png"))
  plot_curves(cells, pairs, os.path.join(root, "mqar_curves.png"))
  plot_state_size(root)
  print("\n" + text + f"\n\nwrote {root}/mqar_study.{{json,md,png}}, mqar_curves.png, mqar_accuracy.png and the report")


if __name__ == "__main__":
  main()
