"""Cooldown branches of a warmup-stable-decay run: one long constant-LR run, many honest (N, D, L) points.

A point on a compute frontier must be the final loss of a schedule that ended there; a mid-run evaluation of
a decaying schedule is not one. A WSD run holds its peak lr; branching it at step s into a short decay of k
steps (Hägele et al., 2024: 10-20% of the steps, the 1-sqrt shape best) gives the loss of a run sized to
s + k steps, at the cost of k steps. A branch is the run's own resume: checkpoint s is copied into a new
workdir and training continues there with the branch's schedule (optim.decay_steps = k, decay_shape, train.steps
= s + k), accepted as a config change and recorded in that workdir's config_changes.jsonl.

  python -m train.cooldowns RUN_DIR --steps 1000,2000,4000 [--fraction 0.2] [--shape 1-sqrt|linear] [--out DIR]

The long run needs optim.schedule = "wsd" (or "constant") and checkpoints kept at the branch steps
(train.ckpt_every dividing them, train.keep_ckpts large enough). Branches go to RUN_DIR-cooldowns/ by default,
one workdir each, which `python -m train.report` reads like any run.
"""

import argparse
import sys
from collections.abc import Sequence

from train import config as config_lib
from train import optim, paths
from train.config import ConfigError

CHANGED = ["optim", "train.steps"]  # what a branch changes in the run's config


def branch_config(config, step: int, cooldown_steps: int, shape: str = "1-sqrt"):
  """The run's config as a branch at `step` decaying over `cooldown_steps` with `shape`."""
  if config.optim.schedule not in ("wsd", "constant"):
    raise ConfigError(f"optim.schedule={config.optim.schedule!r}: cooldown branches need a constant-lr run; train it "
                      "with optim.schedule='wsd' (or 'constant')")
  if shape not in optim.DECAY_SHAPES:
    raise ConfigError(f"cooldown shape {shape!r}; choose one of {optim.DECAY_SHAPES}")
  lr = float(optim.schedule(config.optim, config.train.steps)(step - 1))
  if step < config.optim.warmup_steps or abs(lr - config.optim.lr) > 1e-6 * config.optim.lr:
    raise ConfigError(f"the run's lr before step {step} is not its constant peak (in warmup or in its own decay); "
                      "branch inside the stable phase")
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.optim.update(dict(schedule="wsd", decay_steps=cooldown_steps, decay_shape=shape))
    c.train.steps = step + cooldown_steps
  return c


def _copy_tree(src, dst) -> None:
  dst.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():
    if child.is_dir():
      _copy_tree(child, dst / child.name)
    else:
      (dst / child.name).write_bytes(child.read_bytes())


def branch(run_dir: str, step: int, cooldown_steps: int, *, shape: str = "1-sqrt", out: str | None = None) -> dict:
  """Train the branch of the run in `run_dir` at `step` (its checkpoint) with a `cooldown_steps` decay of `shape`
  in its own workdir under `out` (default RUN_DIR-cooldowns); returns the branch's summary (an unfinished branch
  resumes)."""
  from train import loop

  src = paths.path(run_dir)
  config = config_lib.load(str(src / "config.json"))
  saved = src / "checkpoints" / str(step)
  if not saved.is_dir():
    have = sorted(int(p.name) for p in (src / "checkpoints").iterdir() if p.name.isdigit()) \
      if (src / "checkpoints").is_dir() else []
    raise ConfigError(f"{run_dir} has no checkpoint at step {step} (it has {have or 'none'}); branch at one of those, "
                      "or rerun with train.ckpt_every dividing the branch steps and train.keep_ckpts large enough")
  c = branch_config(config, step, cooldown_steps, shape)
  workdir = paths.path(out or f"{str(src).rstrip('/')}-cooldowns") / f"step{step}-{shape}-{cooldown_steps}"
  if not (workdir / "checkpoints").is_dir():
    _copy_tree(saved, workdir / "checkpoints" / str(step))
    if (src / "metrics.jsonl").exists():  # the history up to the branch; the loop drops records after `step`
      (workdir / "metrics.jsonl").write_bytes((src / "metrics.jsonl").read_bytes())
  return loop.run(c, str(workdir), resume_with_changes=CHANGED)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m train.cooldowns", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("run_dir", help="workdir of a WSD (or constant-lr) run with checkpoints at the steps")
  parser.add_argument("--steps", required=True, help="comma-separated steps to branch at")
  parser.add_argument("--fraction", type=float, default=0.2, help="cooldown length as a fraction of the step")
  parser.add_argument("--shape", default="1-sqrt", choices=optim.DECAY_SHAPES)
  parser.add_argument("--out", default=None, help="parent of the branch workdirs (default RUN_DIR-cooldowns)")
  args = parser.parse_args(argv)
  try:
    for step in (int(s) for s in args.steps.split(",") if s):
      summary = branch(args.run_dir, step, max(round(step * args.fraction), 1), shape=args.shape, out=args.out)
      print(f"branch at {step}: {summary['steps']} steps, loss {summary['loss']}, eval loss {summary['eval_loss']} "
            f"({summary['workdir']})")
  except ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
