"""Quickstart: a small decoder LM (softmax attention + SwiGLU) on embedded data, two tasks.

  text: byte-level LM on this Python's standard-library sources (built into ArrayRecord by the
        project's local TFDS builder; no download).
  mqar: multi-query associative recall (Zoology), accuracy on the answers only.

Run both and print a results table (~3-5 min on 2 CPU cores):
  python -m experiments.quickstart --workdir runs/quickstart
One of them through the shared CLI:
  python -m train --config experiments/quickstart.py:mqar --workdir runs/quickstart/mqar
Expect: text loss falls from ln(256)=5.5 to about 2.3 nats/byte (eval similar); MQAR answer
accuracy climbs from chance (1/128) towards 1.0 as the induction-style recall circuit forms.
"""

import argparse
import os

from experiments import common

TASKS = ("text", "mqar")


def get_config(arg: str | None = None):
  task = arg or "text"
  if task not in TASKS:
    raise ValueError(f"quickstart task must be one of {TASKS}, got {task!r}")
  c = common.lm_config("tiny")
  if task == "text":
    common.text_data(c, seq_len=128)
    c.model.update(dict(d_model=128, n_heads=4, d_ff=384))
    c.optim.update(common.adamw(lr=3e-3, warmup=30, weight_decay=0.1))
    steps = 300
  else:
    common.mqar_data(c, vocab_size=256, num_pairs=8, seq_len=64)
    c.model.update(dict(d_model=128, n_heads=4, d_ff=256))
    c.optim.update(common.adamw(lr=3e-3, warmup=30, weight_decay=0.0))
    steps = 400
  c.data.batch_size = 32
  c.train.update(dict(steps=steps, log_every=20, eval_every=100, eval_steps=8, ckpt_every=100))
  return c


def table(rows: list[dict]) -> str:
  cols = [("task", "{}"), ("params", "{:,}"), ("steps", "{}"), ("loss", "{:.3f}"), ("eval_loss", "{:.3f}"),
          ("accuracy", "{:.3f}"), ("eval_accuracy", "{:.3f}"), ("tokens_per_sec", "{:,.0f}")]
  lines = [" | ".join(c for c, _ in cols), " | ".join("---" for _ in cols)]
  for r in rows:
    lines.append(" | ".join(fmt.format(r[c]) if r.get(c) is not None else "-" for c, fmt in cols))
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description="Train the quickstart LMs and print a results table.")
  parser.add_argument("--workdir", default="runs/quickstart")
  parser.add_argument("--tasks", default=",".join(TASKS))
  args = parser.parse_args()
  from train import loop

  rows = []
  for task in args.tasks.split(","):
    config = get_config(task)
    config.lock()
    summary = loop.run(config, os.path.join(args.workdir, task))
    rows.append({"task": task, **summary})
  print()
  print(table(rows))
  print(f"\nworkdirs: {args.workdir}/<task>/ (metrics.jsonl, tensorboard/, checkpoints/, config.json)")


if __name__ == "__main__":
  main()
