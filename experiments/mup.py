"""µP learning-rate transfer (Yang et al., "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot
Hyperparameter Transfer", 2021): the best Adam learning rate of an LM across widths under the standard
parametrization (SP) and under µP (models/parametrization.py, base width = the smallest width).

A grid of lr x width x {sp, mup}, attention + SwiGLU at fixed depth, head counts fixed (head_dim grows with
width). Under µP the best lr should stay put across widths; under SP it drifts down as width grows.
Paper scale (TPU / GPU; C4 from TFDS with your SentencePiece model TOK; widths 256-2048, 8 layers):
  python -m train.sweep --config experiments/mup.py --root gs://bucket/mup --emit tpu-vm --config.data.spm_model=TOK
  python -m experiments.mup gs://bucket/mup
Local (2 CPU cores; 40 runs of 150 steps: widths 32-256 at 2 layers, byte-level text, 5 lrs):
  python -m train.sweep --config experiments/mup.py:local --parallel 2
  python -m experiments.mup runs/mup-local
Expect (measured locally, seed 0, one run per cell; final eval loss on 16 x 16 x 64 fixed bytes, eval standard
error 0.014-0.016; `python -m experiments.mup /tmp/mupx/mup-local` after the sweep, 42 min wall at --parallel 2
on 2 CPU cores shared with other jobs (load average ~25); one width-256 run took 37 s user CPU):
  | param | width | lr 1.25e-3 | 2.5e-3 | 5e-3   | 1e-2   | 2e-2   | best lr |
  | sp    | 32    | 2.9977     | 2.8100 | 2.7241 | 2.6940 | 2.7290 | 1e-2    |
  | sp    | 64    | 2.7194     | 2.6353 | 2.6219 | 2.6392 | 2.7280 | 5e-3    |
  | sp    | 128   | 2.6529     | 2.6481 | 2.6826 | 2.7334 | 2.8733 | 2.5e-3  |
  | sp    | 256   | 2.6008     | 2.6346 | 2.7191 | 2.8757 | 3.0495 | 1.25e-3 (grid edge) |
  | mup   | 32    | 2.9977     | 2.8100 | 2.7241 | 2.6940 | 2.7290 | 1e-2    |
  | mup   | 64    | 2.9298     | 2.6954 | 2.6174 | 2.6022 | 2.6382 | 1e-2    |
  | mup   | 128   | 2.8788     | 2.6715 | 2.5758 | 2.5803 | 2.6634 | 5e-3    |
  | mup   | 256   | 2.8642     | 2.6841 | 2.5684 | 2.5717 | 2.6179 | 5e-3    |
SP's best lr halves with every doubling of width (and at 256 sits at the grid's lower edge); µP's stays at
5e-3 / 1e-2, whose losses differ by less than the eval standard error at 128 and 256 (one seed: the µP
optimum is "put" within one grid step). µP equals SP at the base width (identical losses at 32), and µP's best
loss improves with width (2.694 -> 2.568) where SP's at its own best lr does too but less (2.694 -> 2.601).
The paper reports the same: µP's optimum fixed across widths, SP's moving.
"""

import argparse
import math
from collections import defaultdict

from experiments import common

PARAMETRIZATIONS = ("sp", "mup")
# widths (the first is µP's base width), layers, heads, steps, lrs: Adam peak lrs a factor 2 apart
SCALES = {
  "local": dict(widths=(32, 64, 128, 256), n_layers=2, n_heads=2, steps=150,
                lrs=(1.25e-3, 2.5e-3, 5e-3, 1e-2, 2e-2)),
  "paper": dict(widths=(256, 512, 1024, 2048), n_layers=8, n_heads=8, steps=10000,
                lrs=(2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)),
}


def get_config(arg: str | None = None):
  """One run: `parametrization=sp|mup`, `width=...`, `lr=...`, `local`."""
  arg = common.parse_arg(arg, parametrization="mup", width=0, lr=0.0, local=False)
  if arg.parametrization not in PARAMETRIZATIONS:
    raise ValueError(f"unknown parametrization {arg.parametrization!r}; known: {PARAMETRIZATIONS}")
  s = SCALES["local" if arg.local else "paper"]
  width = arg.width or s["widths"][len(s["widths"]) // 2]
  c = common.lm_config()
  if arg.local:
    c = common.shrink_for_cpu(c, steps=s["steps"], n_layers=s["n_layers"])
    c.data.update(dict(seq_len=64, batch_size=16))
    c.optim.warmup_steps = 15
    c.train.update(eval_steps=16, eval_every=s["steps"], ckpt_every=s["steps"], log_every=25)  # one final eval
  else:
    common.pretraining_data(c, seq_len=2048)
    c.data.batch_size = 256
    common.pod_scale(c)
    c.optim.warmup_steps = 500
    c.train.update(steps=s["steps"], eval_every=1000, eval_steps=64)
  c.model.update(dict(d_model=width, n_heads=s["n_heads"], d_ff=3 * width, tie_embeddings=False,
                      blocks=common.blocks("attention", "swiglu", s["n_layers"]),
                      parametrization=arg.parametrization, base_width=s["widths"][0]))
  c.optim.update(dict(lr=arg.lr or s["lrs"][len(s["lrs"]) // 2], schedule="cosine", weight_decay=0.0))
  return c


def sweep(add, arg: str | None = None):
  """lr x width x parametrization at the scale ARG names (paper, or `local`)."""
  s = SCALES["local" if "local" in (arg or "") else "paper"]
  for width in s["widths"]:  # smallest first, both parametrizations per width
    for parametrization in PARAMETRIZATIONS:
      for lr in s["lrs"]:
        add(**{"model.parametrization": parametrization, "model.d_model": width, "model.d_ff": 3 * width,
               "optim.lr": lr})


def best_lrs(root: str) -> dict[tuple[str, int], tuple[float, float]]:
  """{(parametrization, width): (best lr, its final eval loss)} over the finished runs under `root`."""
  best = defaultdict(lambda: (math.nan, math.inf))
  for cfg, loss in common.final_evals(root, "eval_loss"):
    key = (cfg["model.parametrization"], cfg["model.d_model"])
    if loss < best[key][1]:
      best[key] = (cfg["optim.lr"], loss)
  return dict(best)


def table(root: str) -> str:
  """Markdown: per parametrization and width, the final eval loss at each lr and the best lr."""
  runs = common.final_evals(root, "eval_loss")
  lrs = sorted({cfg["optim.lr"] for cfg, _ in runs})
  loss = {(cfg["model.parametrization"], cfg["model.d_model"], cfg["optim.lr"]): v for cfg, v in runs}
  lines = ["| parametrization | width | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best lr |",
           "|" + "---|" * (len(lrs) + 3)]
  for (p, w), (lr, _) in sorted(best_lrs(root).items()):
    cells = [f"{loss[p, w, x]:.4f}" if (p, w, x) in loss else "-" for x in lrs]
    lines.append(f"| {p} | {w} | " + " | ".join(cells) + f" | {lr:g} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="The best lr per width and parametrization of a finished sweep.")
  parser.add_argument("root", help="the sweep's root, e.g. runs/mup-local")
  print(table(parser.parse_args(argv).root))


if __name__ == "__main__":
  main()
