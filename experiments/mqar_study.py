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
Local (2 CPU cores; vocab 32, 32 tokens, batch 32, 3000 steps with 10% warm-up unless --steps, eval on 1024
held-out sequences): the whole grid is 14 mixers x 3 widths x 3 pair counts x 3 lrs x 2 seeds (756 runs).
One run through the shared CLI:
  python -m train --config experiments/mqar_study.py:local,mixer=attention,width=64,pairs=4,lr=3e-3 \\
    --workdir runs/mqar/x
Writes <root>/mqar_study.{json,md} (best lr per cell, mean ± std over seeds, eval standard error),
mqar_study.png (accuracy vs width, one panel per number of pairs, chance dashed) and mqar_curves.png
(answer accuracy vs step of each cell's best lr) and mqar_accuracy.png (accuracy vs decoding-state size), next to
train.report's table and plots.

Measured locally (2 CPU cores, quiet but for the runs themselves; ~40 s a run at --parallel 2):
  python -m experiments.mqar_study --root runs/mqar_1k --steps 1000 --widths 64 --pairs 4 \
    --lrs 1e-3,3e-3,1e-2 --seeds 0,1 --parallel 2                        # 14 mixers x 3 lrs x 2 seeds
  python -m experiments.mqar_study --root runs/mqar_1k_stress --steps 1000 --widths 32 --pairs 8 \
    --lrs 1e-3,3e-3,1e-2 --seeds 0 --parallel 2                          # the hardest local cell
  python -m experiments.mqar_study --root runs/mqar_local --mixers attention,attention_kv_shift \
    --widths 64 --pairs 4 --lrs 3e-3,1e-2 --seeds 0                       # 3000 steps (earlier session)
Final eval answer accuracy (1024 held-out sequences; its standard error <= 0.007) after 1000 steps, per lr
1e-3 / 3e-3 / 1e-2, seeds 0 and 1 separated by a comma at d=64 (seed 0 only at d=32); chance 0.067 at 4
pairs, 0.065 at 8; ~0.25 at 4 pairs (~0.125 at 8) is "ln 4" (ln 8): a guess among the context's values,
no key bound:
  mixer                | d=64, 4 pairs                          | d=32, 8 pairs
  attention            | .25,.26 / .25,.26 / .26,.25            | .12 / .13 / .13
  attention_kv_shift   | 1.00,1.00 at every lr                  | 1.00 / 1.00 / 1.00
  forgetting_attention | 1.00,.26 / 1.00,.25 / .25,.25          | .12 / .12 / .12
  delta_net            | 1.00,1.00 at every lr                  | .99 / 1.00 / 1.00
  gated_delta_net      | .85,.95 / 1.00,.87 / 1.00,1.00         | .46 / .19 (seed 1: .43) / 1.00
  kda                  | 1.00,1.00 at every lr                  | .74 / 1.00 / 1.00
  gated_deltaproduct   | 1.00,1.00 at every lr                  | .16 / .68 / .98
  rwkv7                | 1.00,1.00 at every lr                  | 1.00 / 1.00 / 1.00
  retnet               | .25,.65 / .25,.24 / .24,.25            | .12 / .13 / .12
  lightning_attention  | .24,.52 / .25,.25 / .25,.25            | .12 / .12 / .23
  nala                 | .25,.39 / .25,.25 / .25,.40            | .13 / .13 / .13
  gla                  | .25,.25 / .25,.25 / .25,.24            | .13 / .13 / .12
  linear_attention     | .25,.26 / .24,.26 / .26,.25            | .12 / .13 / .13
  norm_attention       | .25,.25 / .24,.25 / .24,.25            | .12 / .12 / .12
  attention, 3000 steps| 0.999 at lr 3e-3 (0.53 at step 900, 0.97 at 1200, >= 0.99 from 2100); 0.244 at 1e-2
  gla + short conv     | 1.000 at lr 3e-3, seed 0 (>= 0.99 by step 500)
"gla + short conv" is GLA with conv_size=4 (its option, off by default as in the paper), run from a config
written by this file's get_config with model.options {"gla_conv": {"layer": "gla", "conv_size": 4}}.
What it shows:
- The lr sweep changes no verdict but one: every mixer with a short convolution or a token shift
  (DeltaNet, KDA, DeltaProduct, RWKV-7, attention + KV-shift, GLA + conv) recalls 4 pairs at d=64 by step
  1000 at every lr and both seeds; Gated DeltaNet does at lr 1e-2 (both seeds, and at d=32 with 8 pairs),
  so its "slower than DeltaNet" of the lr-3e-3-only grid was a learning-rate effect (its gates make the
  effective step smaller). Plain softmax attention stays at ln 4 at every lr and seed by step 1000 and needs
  ~1200-2100 steps at lr 3e-3 (it must build an induction head from two attention layers); FoX forms one by
  step 1000 for seed 0 only (bimodal: 1.00 or 0.25). The mixers with none of these mechanisms (linear
  attention, NormAttention, GLA, NaLa, and RetNet / Lightning Attention, whose fixed decays do not suffice)
  stay at ln 4 in 16 of their 18 runs at d=64; single seed-1 runs of RetNet (.65), Lightning (.52) and NaLa
  (.39-.40) start to bind keys at 1000 steps. GLA recalls by step 500 once given a short conv: its failure is
  the missing previous-token mechanism, not its state or a bug (the ops match the reference library's
  golden vectors; the mixer contract tests check causality and decode == forward).
- The state does not limit recall at this scale: at d=32 with 8 pairs (head dim 16) DeltaNet, Gated
  DeltaNet (lr 1e-2), KDA and RWKV-7 recall as well as attention + KV-shift; DeltaProduct reaches .98 at lr
  1e-2 and is still learning at lower lrs.
Against the papers: Zoology (Fig. 2) has attention solve MQAR at every width, with the gated-convolution /
linear mixers falling behind as pairs grow and short convolutions what makes attention-free mixers recall;
the Gated DeltaNet, DeltaNet and Kimi Linear papers rank the delta rule above GLA / RetNet / Mamba-2 on
recall. Locally the induction step, not the state, separates the mixers: the short-conv mixers learn faster
than attention (a 1000-step budget ranks attention below them: an ordering of learning speed, not
capacity; at 3000 steps attention solves it, as in Zoology), and no state-size effect shows at 32 tokens.
GLA's and linear attention's failures agree with Zoology's point about short convolutions; RetNet and
Lightning below the delta rule agree too; with the lr swept, Gated DeltaNet matches DeltaNet (the Gated
DeltaNet paper's order, within this budget's resolution) and KDA is at least as good as both (Kimi
Linear's). Numbers measured before the MQAR fix (answers written into the input, train/data/mqar.py) are void.
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
  return common.parse_arg(arg, mixer="gated_delta_net", width=64, pairs=16, heads=2, lr=1e-3, steps=0, local=False,
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
  steps = arg.steps or s["steps"]  # steps=N: a shorter (or longer) budget, warm-up and eval cadence scaled with it
  if steps % 200:
    raise ValueError(f"steps must be a multiple of 200 (evals every steps/10 on logged steps), got {steps}")
  c = common.lm_config("tiny")
  common.mqar_data(c, vocab_size=s["vocab_size"], num_pairs=arg.pairs, seq_len=s["seq_len"])
  c.data.eval_examples = s["eval_examples"]
  c.model.update(dict(d_model=arg.width, n_heads=arg.heads, d_ff=2 * arg.width))
  c.model.blocks = common.blocks(arg.mixer, "swiglu", 2)
  c.model.options = OPTIONS
  c.data.batch_size = s["batch_size"]
  c.optim.update(common.adamw(lr=arg.lr, warmup=steps // 10, weight_decay=0.0))
  c.train.update(dict(steps=steps, log_every=20, eval_every=steps // 10,
                      eval_steps=s["eval_examples"] // s["batch_size"], ckpt_every=steps, progress=False,
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
    mean, std = report.mean_std(accs)
    cell = {"mixer": mixer, "width": width, "pairs": pairs, "lr": lr, "n": len(accs), "mean": mean, "std": std,
            "se": statistics.fmean(ses) if ses else None,
            "chance": members[0]["chance"], "curve": curve}
    key = (mixer, width, pairs)
    if key not in cells or cell["mean"] > cells[key]["mean"]:
      cells[key] = cell
  return list(cells.values())


def table(cells: list[dict], widths, pairs) -> str:
  """Markdown: one row per (mixer, pairs), one column per width; cells = best-lr accuracy mean ± std over seeds
  (the eval set's standard error of one run, lr, seeds)."""
  by = {(c["mixer"], c["width"], c["pairs"]): c for c in cells}
  lines = ["mixer | pairs | " + " | ".join(f"d={w}" for w in widths), "---|---|" + "---|" * len(widths)]
  for mixer in dict.fromkeys(c["mixer"] for c in cells):
    for p in pairs:
      found = [by.get((mixer, w, p)) for w in widths]
      if any(found):
        lines.append(f"{mixer} | {p} | " + " | ".join(
          "-" if c is None else f"{c['mean']:.3f} ± {c['std']:.3f} ({_se(c)}lr {c['lr']:.0e}, n={c['n']})"
          for c in found))
  return "\n".join(lines)


def _se(cell: dict) -> str:
  return "" if cell["se"] is None else f"SE {cell['se']:.4f}, "


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
  parser.add_argument("--steps", type=int, default=0, help="training steps of every run (default: the scale's)")
  for g in GRID:
    parser.add_argument(f"--{g}", default="", help=f"comma-separated subset of the scale's {g} (default: all)")
  args = parser.parse_args(argv)
  from train import sweep as sweep_lib

  arg = ",".join(filter(None, ["local" if args.scale == "local" else "", f"steps={args.steps}" if args.steps else ""]
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
