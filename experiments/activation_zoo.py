"""Activation zoo: every registered activation in the same two nets, seeds >= 3, mean ± std, learned shapes.

What it compares: each name in the `activation` registry (fixed: relu, leaky_relu, gelu, gelu_tanh, silu,
swish, relu2, tanh, sigmoid, identity, smelu, generalized_smelu, helu, sine; learnable: rational (PAU),
group_rational (KAT), polynorm / polyrelu (PolyCom), swish_beta, apa, aglu (APA paper), crrelu (EAFO),
snake, velu) in
* mnist1d: an MLP 40 -> 64 -> 64 -> 10 (256-wide at paper scale) on MNIST-1D, eval accuracy;
* text: a 2-layer decoder LM (attention, mlp) on byte-level local text, eval loss;
at equal parameters (the activations' own parameters are a handful of scalars per layer, group_rational
a few per group). Papers' claims: PAU matches or beats the best fixed activation on small vision nets;
PolyNorm beats SwiGLU in LLMs; APA/AGLU beat ReLU/SiLU on long-tailed vision tasks; CRReLU beats ReLU/GELU
on CIFAR / ViT; SmeLU matches ReLU's accuracy with better reproducibility; HeLU closes part of ReLU's gap
to GELU; VeLU beats ReLU / GELU / Swish on image classification; Snake extrapolates periodic data (see
experiments/inr.py); SIREN's sine is for INRs, not classification (expected to do poorly here).

One run / the whole zoo (runs the sweep, skipping finished runs; prints the table; plots the learned shapes
of the learnable activations of the seed-0 runs to <root>/learned_shapes.png):
  python -m train --config experiments/activation_zoo.py:local,task=mnist1d,act=aglu --workdir runs/zoo/aglu
  python -m experiments.activation_zoo --task mnist1d --scale local [--parallel 2]
  python -m experiments.activation_zoo --task text --scale local
Measured locally (mnist1d, `--scale local`: MLP 64-64, 600 steps, batch 100, seeds 0-2, eval accuracy on 1000
test examples, 2 CPU cores under heavy load, ~40 min for the 72 runs at --parallel 2), mean ± std:
  polyrelu .538 ± .020 | velu .537 ± .013 | aglu .536 ± .006 | gelu .534 ± .003 | gelu_tanh .534 ± .003 |
  polynorm .530 ± .013 | group_rational .528 ± .006 | swish_beta .526 ± .022 | silu = swish .523 ± .008 |
  rational .521 ± .010 | crrelu .515 ± .017 | relu2 .513 ± .010 | leaky_relu .511 ± .011 | relu .508 ± .011 |
  helu .508 ± .010 | snake .506 ± .016 | generalized_smelu .502 ± .010 | smelu .502 ± .005 | tanh .476 ± .012 |
  sine .469 ± .043 | apa .324 ± .006 | identity .322 ± .008 | sigmoid .312 ± .002. Smooth and learnable
  activations lead the ReLU family by 1-3 points at this scale, within about two standard deviations of each
  other; APA (a sigmoid-shaped gate, as the paper uses it for classifier heads) trains like sigmoid in hidden
  layers, and AGLU is the form for hidden layers.
Text (`--scale local`: 2 layers, d_model 64, d_ff 192, batch 16 x 128 bytes, 300 steps, eval loss on 32K
held-out bytes; seeds 0-2, all 72 runs; 30 of them in an earlier session under load, the other 42 with
`python -m experiments.activation_zoo --task text --scale local --parallel 2` on a quiet machine, 14 min),
mean ± std:
  snake 2.609 ± .044 | relu2 2.609 ± .034 | polyrelu 2.612 ± .011 | group_rational 2.618 ± .051 |
  crrelu 2.628 ± .041 | polynorm 2.630 ± .023 | velu 2.633 ± .032 | aglu 2.635 ± .035 | gelu = gelu_tanh
  2.635 ± .034 | rational 2.638 ± .039 | helu 2.639 ± .072 | generalized_smelu 2.643 ± .068 | leaky_relu
  2.647 ± .076 | relu 2.649 ± .079 | swish_beta 2.650 ± .018 | smelu 2.654 ± .076 | silu = swish 2.655 ± .008 |
  tanh 2.661 ± .025 | identity 2.663 ± .025 | apa 2.678 ± .032 | sigmoid 2.691 ± .028 | sine 3.282 ± .016.
The seed spread (std up to .08; relu's single runs span 2.56-2.71) is larger than the gaps among the first
twenty (2.609-2.663, identity included: at 300 steps a 2-layer byte LM gets most of its loss from attention
and the embeddings), so the text task does not separate the activations at this scale; only sigmoid / APA
(a sigmoid-shaped gate) trail by about one std, and SIREN's sine (no ω0 scaling in an LM's hidden layer, a
periodic response to every pre-activation) fails to train (3.28).
"""

import argparse
import math
import pathlib
import statistics

import ml_collections

from experiments import common
from layers import registry
from models.mlp import mlp_model_config
from train import report

SEEDS = (0, 1, 2)
OPTIONS = {"generalized_smelu": {"slope_left": 0.05, "offset": -0.05},  # (group_rational: KAT's G = 8, the default)
           "velu": {"alpha": 2.0, "beta1": 1.0, "beta2": 0.7}}  # the VeLU curve its authors plot (module docstring)


def activations() -> list[str]:
  return registry.names("activation")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, task="mnist1d", act="relu", local=False)
  if arg.task not in ("mnist1d", "text") or arg.act not in activations():
    raise ValueError(f"task in ['mnist1d', 'text'], act in {activations()}; got {arg}")
  if arg.task == "mnist1d":
    c = common.base_config()
    c.model = mlp_model_config((64, 64) if arg.local else (256, 256), activation=arg.act, n_outputs=10,
                               in_features=40)
    c.data.update(dict(name="mnist1d", batch_size=100, train_split="train", eval_split="test"))
    c.optim.update(common.adamw(lr=2e-3, warmup=50, schedule="cosine", clip=1.0, weight_decay=1e-4, b2=0.999))
    steps = 600 if arg.local else 8000
    c.train.update(dict(loss="xent", steps=steps, log_every=steps // 20, eval_every=steps // 3, eval_steps=10,
                        ckpt_every=steps // 3, progress=False))
  else:
    c = common.lm_config(size="small")
    common.text_data(c, seq_len=256)
    c.model.blocks = common.blocks("attention", "mlp", 12)
    c.optim.update(common.adamw(lr=1e-3, warmup=200, schedule="cosine", clip=1.0, weight_decay=0.1))
    if arg.local:
      c = common.shrink_for_cpu(c, steps=300)
      c.train.eval_steps = 16  # 32K held-out bytes: the activations differ by little, so the eval noise must be small
    c.model.activation = arg.act
    c.train.progress = False
  if arg.task == "mnist1d":  # the MLP model reads an activation's options under its name
    c.model.options = ml_collections.ConfigDict({k: dict(v) for k, v in OPTIONS.items()})
  else:  # the LM's options are per block name: the `mlp` feed-forward hands its activation its options
    c.model.options = ml_collections.ConfigDict({"mlp": {"activation_options": dict(OPTIONS.get(arg.act, {}))}})
  return c


def sweep(add, arg: str | None = None) -> None:
  text = common.parse_arg(arg, task="mnist1d", act="relu", local=False).task == "text"
  for act in activations():
    for seed in SEEDS:
      overrides = {"model.activation": act, "seed": seed}
      if text and act in OPTIONS:  # the base config was built for another activation
        overrides["model.options.mlp.activation_options"] = OPTIONS[act]
      add(**overrides)


def table(root: str, task: str) -> str:
  """Markdown: per activation, the final eval accuracy (mnist1d) or eval loss (text) of the finished runs, mean ±
  std over seeds."""
  key = "eval_accuracy" if task == "mnist1d" else "eval_loss"
  values: dict[str, list[float]] = {}
  for config, value in common.final_evals(root, key):
    values.setdefault(config["model.activation"], []).append(value)
  lines = [f"| activation | {key} | seeds |", "|---|---|---|"]
  order = sorted(values, key=lambda a: -statistics.mean(values[a]) if task == "mnist1d" else statistics.mean(values[a]))
  for act in order:
    v = values[act]
    lines.append("| {} | {:.4f} ± {:.4f} | {} |".format(act, *report.mean_std(v), len(v)))
  return "\n".join(lines)


def plot_shapes(root: str, out: pathlib.Path) -> pathlib.Path:
  """One panel per learnable activation: its first layer's learned shape (seed 0) against its init."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  from experiments import activation_plots as plot

  panels = []
  for run_dir in sorted(pathlib.Path(root).glob("*seed-0*")):
    try:
      params, init, config, _ = plot.load_run(run_dir)
    except FileNotFoundError:
      continue
    act = config["model"]["activation"]
    learned, start = plot.find_activations(params), plot.find_activations(init)
    if learned:
      name = sorted(learned)[0]
      panels.append((act, learned[name], start.get(name)))
  x = np.linspace(-3, 3, 301)
  cols, rows = 4, math.ceil(len(panels) / 4)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
  for ax, (act, leaves, init_leaves) in zip(axes.ravel(), panels):
    hints = dict(polycom=act if act in plot.POLYCOM else "polynorm", gated=act == "aglu",
                 velu=config["model"]["options"].get("velu"))
    for i, y in enumerate(plot.curves(leaves, x, **hints)[1]):
      ax.plot(x, y, color=f"C{i % 10}", lw=1.3, label="learned" if i == 0 else None)
    if init_leaves is not None:
      ax.plot(x, plot.curves(init_leaves, x, **hints)[1][0], "k--", lw=0.9, label="init")
    ax.set_title(act, fontsize=9)
    ax.legend(fontsize=7)
  for ax in axes.ravel()[len(panels):]:
    ax.set_visible(False)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def main() -> None:
  from train import sweep as sweep_lib

  parser = argparse.ArgumentParser(description="Activation zoo: sweep (finished runs skipped), table, learned shapes")
  parser.add_argument("--task", choices=["mnist1d", "text"], default="mnist1d")
  parser.add_argument("--scale", choices=["local", "paper"], default="local")
  parser.add_argument("--parallel", type=int, default=1)
  args = parser.parse_args()
  spec = f"experiments/activation_zoo.py:task={args.task}" + (",local" if args.scale == "local" else "")
  root = f"runs/activation_zoo-{args.task}-{args.scale}"
  sweep_lib.main(["--config", spec, "--root", root, "--parallel", str(args.parallel)])
  print(table(root, args.task))
  print(f"-> {plot_shapes(root, pathlib.Path(root) / 'learned_shapes.png')}")


if __name__ == "__main__":
  main()
