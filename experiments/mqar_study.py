"""MQAR recall study (Zoology, Arora et al. 2023 style): which token mixers can recall key-value pairs?

Two-layer LMs (mixer + SwiGLU per layer) are trained on multi-query associative recall and scored by
answer accuracy on held-out sequences, for every mixer x model width x number of key-value pairs.
Softmax attention is the reference; the recurrent mixers must squeeze all pairs into a fixed state
(H x K x V per layer), so their accuracy falls as pairs grow and rises with width.

Paper-like scale (GPU / TPU; vocab 8192, 512 tokens, up to 128 pairs, widths 64..512):
  python -m experiments.mqar_study --scale paper --workdir gs://bucket/mqar
One cell through the shared CLI:
  python -m train --config experiments/mqar_study.py:local,mixer=gla,width=64,pairs=16 --workdir runs/mqar/x
Local grid (2 CPU cores; minutes per run, so pick a slice):
  python -m experiments.mqar_study --workdir runs/mqar_study --widths 64,128 --pairs 8 --steps 2000
Recall emerges late: at 300 steps (d=64, 16 pairs) even attention is near chance (measured 0.05), so
give local runs a few thousand steps before reading the table.
Writes <workdir>/mqar_study.json, a markdown table and <workdir>/mqar_study.png (accuracy vs width,
one panel per number of pairs). Expect (Zoology, Gated DeltaNet paper): attention ~1.0 everywhere;
delta-rule mixers (DeltaNet, Gated DeltaNet) next; GLA and RetNet below them; plain linear attention
weakest at small width / many pairs.
"""

import argparse
import json
import os

from experiments import common

MIXERS = ("attention", "linear_attention", "retnet", "gla", "delta_net", "gated_delta_net")
SCALES = {  # vocab, seq_len, train steps, batch, default widths and pair counts
  "local": dict(vocab_size=256, seq_len=128, steps=400, batch_size=32, widths=(32, 64, 128), pairs=(8, 16, 32)),
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
  c.optim.update(common.adamw(lr=3e-3 if arg.local else 1e-3, warmup=s["steps"] // 10, weight_decay=0.0))
  n_eval = 4 if arg.local else 16
  c.train.update(dict(steps=s["steps"], log_every=20, eval_every=s["steps"], eval_steps=n_eval,
                      ckpt_every=s["steps"], progress=False, tensorboard=False))
  return c


def sweep(add):
  s = SCALES["local"]
  for mixer in MIXERS:
    for width in s["widths"]:
      for pairs in s["pairs"]:
        add(**{"model.blocks": common.blocks(mixer, "swiglu", 2), "model.d_model": width,
               "model.d_ff": 2 * width, "data.num_pairs": pairs})


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
  parser = argparse.ArgumentParser(description="Train the MQAR grid and write a table + plot.")
  parser.add_argument("--workdir", default="runs/mqar_study")
  parser.add_argument("--scale", choices=sorted(SCALES), default="local")
  parser.add_argument("--mixers", default=",".join(MIXERS))
  parser.add_argument("--widths", default=None, help="comma-separated; default from --scale")
  parser.add_argument("--pairs", default=None, help="comma-separated; default from --scale")
  parser.add_argument("--steps", type=int, default=None, help="override train steps per run")
  args = parser.parse_args(argv)
  from train import loop

  s = SCALES[args.scale]
  widths = [int(w) for w in args.widths.split(",")] if args.widths else list(s["widths"])
  pairs = [int(p) for p in args.pairs.split(",")] if args.pairs else list(s["pairs"])
  rows = []
  for mixer in args.mixers.split(","):
    for p in pairs:
      for w in widths:
        local = ",local" if args.scale == "local" else ""
        config = get_config(f"mixer={mixer},width={w},pairs={p}{local}")
        if args.steps:
          config.train.update(dict(steps=args.steps, eval_every=args.steps, ckpt_every=args.steps))
        config.lock()
        summary = loop.run(config, os.path.join(args.workdir, f"{mixer}-d{w}-p{p}"))
        rows.append({"mixer": mixer, "width": w, "pairs": p, "eval_accuracy": summary["eval_accuracy"],
                     "eval_loss": summary["eval_loss"], "params": summary["params"],
                     "tokens_per_sec": summary["tokens_per_sec"]})
        print(f"{mixer:16} d={w:4d} pairs={p:3d}  eval_accuracy={summary['eval_accuracy']:.3f}", flush=True)
        write(rows, widths, pairs, args.workdir)  # after every run, so a partial grid is kept
  print("\n" + table(rows, widths, pairs) + f"\n\nwrote {args.workdir}/mqar_study.{{json,md,png}}")


def write(rows: list[dict], widths, pairs, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "mqar_study.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(workdir, "mqar_study.md"), "w") as f:
    f.write(table(rows, widths, pairs) + "\n")
  plot(rows, widths, pairs, os.path.join(workdir, "mqar_study.png"))


if __name__ == "__main__":
  main()
