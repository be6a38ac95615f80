"""python -m train --config experiments/FILE.py[:ARG] --workdir DIR [--resume_with_changes=KEY,...] [--config.a.b=v]"""

import argparse
import json
import sys

from train import config as config_lib
from train.config import ConfigError


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
  parser.add_argument("--config", required=True, help="experiments/FILE.py[:ARG] or DIR/config.json")
  parser.add_argument("--workdir", required=True, help="run directory: metrics, checkpoints, config.json")
  parser.add_argument("--resume_with_changes", default="", metavar="KEY,...",
                      help="config keys or sections (e.g. train.steps,optim) a resume may change from the "
                           "checkpoint's config; recorded in DIR/config_changes.jsonl")
  args, overrides = parser.parse_known_args(argv)
  from train import checkpoint, lock, loop

  try:
    config = config_lib.load(args.config)
    config_lib.apply_overrides(config, overrides)
    summary = loop.run(config, args.workdir, resume_with_changes=[k for k in args.resume_with_changes.split(",") if k])
  except ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  except (loop.NonFiniteLoss, lock.WorkdirBusy, checkpoint.NoRestorableCheckpoint) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(summary, indent=2, default=str))
  return 0


if __name__ == "__main__":
  sys.exit(main())
