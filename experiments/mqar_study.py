"""MQAR recall study (Zoology, Arora et al. 2023 style): which token mixers can recall key-value pairs?

Two-layer LMs (mixer + SwiGLU per layer) are trained on multi-query associative recall and scored by
answer accuracy on held-out sequences, for every mixer x model width x number of key-value pairs.
Softmax attention is the reference; the recurrent mixers must squeeze all pairs into a fixed state
(H x K x V per layer), so their accuracy falls as pairs grow and rises with width.

Paper-like scale (GPU / TPU; vocab 8192, 512 tokens, up to 128 pairs, widths 64..512), as cluster
launch scripts, then the table from the finished runs:
  python -m train.sweep --config experiments/mqar_study.py --emit slurm
  python -m experiments.mqar_study --scale paper
One cell through the shared CLI (e.g. with more steps):
  python -m train --config experiments/mqar_study.py:local,mixer=gla,width=64,pairs=8 --workdir runs/mqar/x \\
    --config.train.steps=3000
Local grid (2 CPU cores; 90 runs of about a minute each; vocab 32, 32 tokens, 2..8 pairs, 2000 steps):
  python -m experiments.mqar_study --parallel 2
Measured locally (width 64, 4 pairs; answer accuracy at steps 1000 / 2000): DeltaNet 1.00 / 1.00,
Gated DeltaNet 0.94 / 1.00, RetNet 0.58 / 0.57, GLA 0.46 / 0.55, linear attention 0.54 / 0.54, softmax
attention 0.34 / 0.44 (attention's induction mechanism forms late at this scale: an independent minimal
JAX transformer on the same data learns at the same rate).
Runs the grid with train.sweep (finished runs are skipped), then writes <root>/mqar_study.json, a
markdown table and <root>/mqar_study.png (accuracy vs width, one panel per number of pairs) next to
train.report's table and plots. Expect (Zoology, Gated DeltaNet paper): attention ~1.0 everywhere;
delta-rule mixers (DeltaNet, Gated DeltaNet) next; GLA and RetNet below them; plain linear attention
weakest at small width / many pairs.
"""

import argparse
import json
import os

from experiments import common

MIXERS = ("attention", "linear_attention", "retnet", "gla", "delta_net", "gated_delta_net", "kda",
          "gated_deltaproduct", "rwkv7", "forgetting_attention")
SCALES = {  # vocab, seq_len, train steps, batch, default widths and pair counts
  "local": dict(vocab_size=32, seq_len=32, steps=2000, batch_size=32, widths=(32, 64, 128), pairs=(2, 4, 8)),
  "paper": dict(vocab_size=8192, seq_len=512, steps=20000, batch_size=256, widths=(64, 128, 256, 512),
                pairs=(32, 64, 128)),
}


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, mixer="gated_delta_net", width=64, pairs=16, heads=2, local=False)
  if arg.mixer not in MIXERS:
    raise ValueError(f"mixer must be one of {MIXERS}, got {arg.mixer!r}")
  s = SCALES["local" if arg.local else "paper"]
  c = common.lm_config("tiny")
  common.mqar_data(c, vocab_size=s["vocab_size"], num_pairs=arg.pairs, seq_len=s["seq_len"])
  c.model.update(dict(d_model=arg.width, n_heads=arg.heads, d_ff=2 * arg.width))
  c.model.blocks = common.blocks(arg.mixer, "swiglu", 2)
  c.data.batch_size = s["batch_size"]
  c.optim.update(common.adamw(lr=1e-3, warmup=s["steps"] // 10, weight_decay=0.0))
  n_eval = 4 if arg.local else 16
  c.train.update(dict(steps=s["steps"], log_every=20, eval_every=s["steps"], eval_steps=n_eval,
                      ckpt_every=s["steps"], progress=False, tensorboard=False))
  return c


def sweep(add, arg: str | None = None):
  """Every mixer x width x number of pairs, at the scale the ARG names (":local" or the paper's)."""
  s = SCALES["local" if "local" in (arg or "") else "paper"]
  for mixer in MIXERS:
    for width in s["widths"]:
      for pairs in s["pairs"]:
        add(**{"model.blocks": common.blocks(mixer, "swiglu", 2), "model.d_model": width,
               "model.d_ff": 2 * width, "data.num_pairs": pairs})


def study_rows(report_rows: list[dict]) -> list[dict]:
  """train.report rows -> {mixer, width, pairs, eval_accuracy} (the mixer read off the block pattern)."""
  return [{"mixer": r["model.blocks"].split(",")[0].strip("( "), "width": r["model.d_model"],
           "pairs": r["data.num_pairs"], "eval_accuracy": r["eval_accuracy"]} for r in report_rows]


def table(rows: list[dict], widths, pairs) -> str:
  """Markdown: one row per (mixer, pairs), one column per width, cells = eval answer accuracy."""
  acc = {(r["mixer"], r["width"], r["pairs"]): r["eval_accuracy"] for r in rows}
  lines = ["mixer | pairs | " + " | ".join(f"d={w}" for w in widths), "---|---|" + "---|" * len(widths)]
  for mixer in dict.fromkeys(r["mixer"] for r in rows):
    for p in pairs:
      cells = [acc.get((mixer, w, p)) for w in widths]
      lines.append(f"{mixer} | {p} | " + " | ".join("-" if a is None else f"{a:.3f}" for a in cells))
  return "\n".join(lines)


def plot(rows: list[dict], widths, pairs, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.5), sharey=True, squeeze=False)
  for ax, p in zip(axes[0], pairs):
    for mixer in dict.fromkeys(r["mixer"] for r in rows):
      pts = sorted((r["width"], r["eval_accuracy"]) for r in rows if r["mixer"] == mixer and r["pairs"] == p)
      if pts:
        ax.plot(*zip(*pts), marker="o", label=mixer)
    ax.set_ylim(0.0, 1.02)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(widths), [str(w) for w in widths])
    ax.set_title(f"{p} key-value pairs")
    ax.set_xlabel("model width")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("MQAR answer accuracy")
  axes[0][-1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Run the MQAR grid (train.sweep), then write its table + plot.")
  parser.add_argument("--scale", choices=sorted(SCALES), default="local")
  parser.add_argument("--root", default=None, help="sweep root (default runs/mqar_study[-local])")
  parser.add_argument("--parallel", type=int, default=1)
  args = parser.parse_args(argv)
  from train import report
  from train import sweep as sweep_lib

  spec = "experiments/mqar_study.py" + (":local" if args.scale == "local" else "")
  root = args.root or sweep_lib.default_root(spec)
  if sweep_lib.main(["--config", spec, "--root", root, "--parallel", str(args.parallel)]):
    raise SystemExit(f"some MQAR runs failed; see {root}/*/log.txt")
  rows = study_rows(report.report(root)["rows"])
  s = SCALES[args.scale]
  with open(os.path.join(root, "mqar_study.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(root, "mqar_study.md"), "w") as f:
    f.write(table(rows, s["widths"], s["pairs"]) + "\n")
  plot(rows, s["widths"], s["pairs"], os.path.join(root, "mqar_study.png"))
  print("\n" + table(rows, s["widths"], s["pairs"]) + f"\n\nwrote {root}/mqar_study.{{json,md,png}} and the report")


if __name__ == "__main__":
  main()
