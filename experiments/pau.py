"""PAU (Molina et al., "Padé Activation Units", ICLR 2020): learnable rational activations vs fixed ones.

A LeNet-like conv net (or an MLP) whose every activation is ReLU, Leaky-ReLU, Swish, GELU or a
rational P/Q (degrees 5/4, leaky-ReLU init, one rational per layer, coefficients in their own
optimizer group, no weight decay) in one of its denominator versions: pau_a = safe PAU
(Q = 1 + Σ|b_j||x|^j), pau_b, pau_c, pau_d (B + training noise), pau_n (unsafe, can divide by ~0).

Local (2 CPU cores, ~1-2 min a run; MNIST-1D generated locally, no download):
  python -m train --config experiments/pau.py:local --workdir runs/pau/relu
  python -m train --config experiments/pau.py:local,act=pau_a --workdir runs/pau/pau_a
Full comparison (9 activations x 3 seeds), then the table, loss curves and learned shapes:
  python -m train.sweep --config experiments/pau.py:local --parallel 2
  python -m experiments.pau --root runs/pau-local
Paper scale (TFDS datasets prepared under data_dir; GPU/TPU): data=mnist | fashion_mnist | cifar10,
  python -m train.sweep --config experiments/pau.py:data=fashion_mnist
Expect: every activation trains MNIST-1D far above chance (10%), PAU at or near the top and its learned
shapes drifting away from the leaky-ReLU init; the paper (LeNet / VGG on MNIST, Fashion-MNIST,
CIFAR-10; MobileNetV2 on ImageNet) reports PAU on par with or better than the best fixed activation,
e.g. MobileNetV2 top-1 ~71.2% PAU vs 71.0% Swish vs 69.6% ReLU (read off the authors' figures).
The paper-scale CIFAR-10 net here is the same LeNet shape, not the paper's VGG-8.
"""

import argparse
import json
import math
import pathlib

import ml_collections

from experiments import common
from models.mlp import convnet_model_config, mlp_model_config

# label: (registered activation, rational version or "")
ACTIVATIONS = {
  "relu": ("relu", ""), "leaky_relu": ("leaky_relu", ""), "swish": ("silu", ""), "gelu": ("gelu", ""),
  "pau_a": ("rational", "A"), "pau_b": ("rational", "B"), "pau_c": ("rational", "C"),
  "pau_d": ("rational", "D"), "pau_n": ("rational", "N"),
}
SEEDS = (0, 1, 2)
# data name: (data source, tfds name, spatial shape, channels, train examples)
DATA = {
  "mnist1d": ("mnist1d", "", (40,), 1, 4000),
  "digits": ("digits", "", (8, 8), 1, 1437),
  "mnist": ("tfds_images", "mnist", (28, 28), 1, 60000),
  "fashion_mnist": ("tfds_images", "fashion_mnist", (28, 28), 1, 60000),
  "cifar10": ("tfds_images", "cifar10", (32, 32), 3, 50000),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, act="relu", data="mnist1d", net="lenet", epochs=0, local=False)
  if arg.act not in ACTIVATIONS or arg.data not in DATA or arg.net not in ("lenet", "mlp"):
    raise ValueError(f"act in {sorted(ACTIVATIONS)}, data in {sorted(DATA)}, net in ['lenet', 'mlp']; got {arg}")
  name, version = ACTIVATIONS[arg.act]
  source, tfds_name, spatial, channels, n_train = DATA[arg.data]
  c = common.base_config()
  if arg.net == "lenet":
    c.model = convnet_model_config(activation=name, n_outputs=10, in_channels=channels, spatial=spatial)
  else:
    c.model = mlp_model_config((128, 128), activation=name, n_outputs=10,
                               in_features=channels * math.prod(spatial))
  c.model.options.rational = ml_collections.ConfigDict(dict(version=version or "A", init="leaky_relu"))
  c.data.update(dict(name=source, batch_size=100 if arg.local else 256, train_split="train", eval_split="test"))
  if tfds_name:
    c.data.tfds_name = tfds_name
  c.optim.update(common.adamw(lr=2e-3, warmup=100, schedule="cosine", clip=1.0, weight_decay=1e-4, b2=0.999))
  epochs = arg.epochs or (20 if arg.local else 100)
  steps = epochs * n_train // c.data.batch_size
  c.train.update(dict(loss="xent", steps=steps, log_every=max(steps // 60, 1), eval_every=max(steps // 6, 1),
                      eval_steps=10 if arg.local else 40, ckpt_every=max(steps // 3, 1), progress=False))
  return c


def sweep(add) -> None:
  for name, version in ACTIVATIONS.values():
    for seed in SEEDS:
      add(**{"model.activation": name, **({"model.options.rational.version": version} if version else {}),
             "seed": seed})


def main() -> None:
  from experiments import activation_plots as plot
  from train import report

  parser = argparse.ArgumentParser(description="PAU comparison report: table, loss curves, learned shapes.")
  parser.add_argument("--root", default="runs/pau-local", help="the sweep root (python -m train.sweep --root)")
  args = parser.parse_args()
  root = pathlib.Path(args.root)
  try:
    result = report.report(str(root))
  except ValueError as e:
    raise SystemExit(str(e)) from None
  print(result["markdown"])  # eval_accuracy per activation (and rational version), mean ± std over seeds
  for run in sorted(root.glob("*/config.json")):
    model = json.loads(run.read_text())["model"]
    if model["activation"] == "rational" and (run.parent / "checkpoints").is_dir():
      version = model["options"]["rational"]["version"]
      plot.plot_run(str(run.parent), root / f"activations_pau_{version.lower()}.png")
  print(f"-> {result['csv']}, {', '.join(result['plots'])}, {root}/activations_pau_*.png")


if __name__ == "__main__":
  main()
