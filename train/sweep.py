"""Run an experiment's grid: python -m train.sweep --config experiments/FILE.py[:ARG] [options].

The experiment file's `sweep(add)` (or `sweep(add, arg)`, given the ARG after the colon) calls
`add(**{"dotted.key": value, ...})` once per run (layer types x sizes x seeds x lrs ...).
Each run gets its own workdir, named from its overrides, under --root (default
runs/<file>[-<arg>]). Finished runs (summary.json present) are skipped; interrupted ones resume
from their checkpoints. --parallel N runs N local processes; --emit slurm|tpu-vm|shell writes one
launch command per run instead, so scaling past one machine is JAX's own multi-host runtime
(jax.distributed), not anything home-made.
"""

import argparse
import concurrent.futures
import dataclasses
import hashlib
import inspect
import os
import re
import shlex
import subprocess
import sys

from train import config as config_lib
from train import paths
from train.loop import SUMMARY


@dataclasses.dataclass
class Run:
  name: str
  overrides: dict
  workdir: str

  @property
  def status(self) -> str:
    workdir = paths.path(self.workdir)
    if (workdir / SUMMARY).exists():
      return "done"
    if (workdir / "checkpoints").is_dir():
      return "interrupted"
    return "new"


def _short(value) -> str:
  text = value if isinstance(value, str) else repr(value)
  text = text.replace("*", "x")
  return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def run_name(overrides: dict) -> str:
  """'model.d_model=64, seed=1' -> 'd_model-64_seed-1'; long names end in a hash so they stay unique."""
  if not overrides:
    return "base"
  name = "_".join(f"{k.split('.')[-1]}-{_short(v)}" for k, v in overrides.items())
  if len(name) > 80:
    digest = hashlib.sha256(repr(sorted(overrides.items())).encode()).hexdigest()[:8]
    name = f"{name[:70]}-{digest}"
  return name


def default_root(spec: str) -> str:
  path, arg = config_lib.split_spec(spec)
  return os.path.join("runs", path.stem + (f"-{_short(arg)}" if arg else ""))


def expand(spec: str, root: str | None = None) -> list[Run]:
  """The runs of the experiment's sweep(), each override checked against the config now."""
  module = config_lib.load_module(spec)
  if not hasattr(module, "sweep"):
    raise config_lib.ConfigError(f"{config_lib.split_spec(spec)[0]} defines no sweep(add); nothing to run")
  root = root or default_root(spec)
  grid: list[dict] = []

  def add(**overrides) -> None:
    grid.append(overrides)

  if len(inspect.signature(module.sweep).parameters) >= 2:  # sweep(add, arg): the grid depends on ARG
    module.sweep(add, config_lib.split_spec(spec)[1])
  else:
    module.sweep(add)
  runs, seen = [], set()
  for overrides in grid:
    resolve(spec, overrides)  # fail now, before anything runs, on a bad key or value
    name = run_name(overrides)
    if name in seen:
      raise config_lib.ConfigError(f"sweep defines run {name!r} twice: {overrides}")
    seen.add(name)
    runs.append(Run(name, overrides, os.path.join(root, name)))
  return runs


def resolve(spec: str, overrides: dict):
  config = config_lib.load(spec)
  for key, value in overrides.items():
    config_lib.set_value(config, key, value)
  return config


def command(run: Run, extra: list[str] = ()) -> list[str]:
  return [sys.executable, "-m", "train", "--config", os.path.join(run.workdir, "config.json"),
          "--workdir", run.workdir, *extra]


def prepare(spec: str, run: Run) -> None:
  """Write the run's resolved config so the launch command needs nothing but its workdir."""
  from train import validate

  config = resolve(spec, run.overrides)
  validate.validate(config)
  config_lib.save(config, run.workdir)


def launch(run: Run) -> int:
  """Run one training process; its output goes to WORKDIR/log.txt (a remote log is written when it ends)."""
  env = {**os.environ, "PYTHONPATH": str(config_lib.PROJECT_ROOT)}
  log = paths.path(run.workdir) / "log.txt"
  if paths.is_remote(log):
    done = subprocess.run(command(run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    paths.append(log, done.stdout)
    return done.returncode
  with log.open("a") as f:
    return subprocess.run(command(run), stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def emit(kind: str, runs: list[Run], root: str) -> str:
  """Write a launch script for a cluster; returns its path."""
  paths.path(root).mkdir(parents=True, exist_ok=True)
  cmds = [" ".join(shlex.quote(x) for x in ["python", "-m", "train", *command(r)[3:]]) for r in runs]
  if kind == "shell":
    path, body = os.path.join(root, "launch.sh"), "#!/usr/bin/env bash\nset -e\n" + "\n".join(cmds) + "\n"
  elif kind == "slurm":
    path = os.path.join(root, "launch.slurm")
    array = "\n".join(f"  {shlex.quote(c)}" for c in cmds)
    body = (f"#!/usr/bin/env bash\n#SBATCH --job-name=ablax-sweep\n#SBATCH --array=0-{len(cmds) - 1}\n"
            "#SBATCH --nodes=1\n#SBATCH --gpus-per-node=8\n#SBATCH --output=%x-%A_%a.out\n"
            "# One array task per run; multi-node runs: add --config.distributed.initialize=true and\n"
            "# set --nodes, srun then starts one process per node and jax.distributed reads SLURM's env.\n"
            f"CMDS=(\n{array}\n)\nsrun bash -c \"${{CMDS[$SLURM_ARRAY_TASK_ID]}}\"\n")
  elif kind == "tpu-vm":
    path = os.path.join(root, "launch_tpu.sh")
    lines = [f"gcloud compute tpus tpu-vm ssh \"$TPU_NAME\" --zone \"$ZONE\" --worker=all --command "
             f"{shlex.quote('cd ~/ablax && ' + c + ' --config.distributed.initialize=true')}" for c in cmds]
    body = ("#!/usr/bin/env bash\n# Runs each sweep run on every worker of a TPU VM slice, one after another;\n"
            "# jax.distributed.initialize() finds the slice's other hosts by itself.\nset -e\n"
            ': "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"\n' + "\n".join(lines) + "\n")
  else:
    raise ValueError(f"--emit must be slurm, tpu-vm or shell, got {kind!r}")
  paths.path(path).write_text(body)
  if not paths.is_remote(path):
    os.chmod(path, 0o755)
  return path


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m train.sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True)
  parser.add_argument("--root", default=None, help="parent of the run workdirs (default runs/<file>[-<arg>])")
  parser.add_argument("--parallel", type=int, default=1)
  parser.add_argument("--dry-run", action="store_true", help="list the runs and their status only")
  parser.add_argument("--emit", choices=["slurm", "tpu-vm", "shell"], default=None)
  args = parser.parse_args(argv)
  try:
    runs = expand(args.config, args.root)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  root = args.root or default_root(args.config)
  for r in runs:
    print(f"{r.status:12} {r.workdir}  {r.overrides}")
  if args.dry_run:
    return 0
  todo = [r for r in runs if r.status != "done"]
  for r in todo:
    prepare(args.config, r)
  if args.emit:
    print(f"wrote {emit(args.emit, todo, root)} ({len(todo)} runs)")
    return 0
  with concurrent.futures.ThreadPoolExecutor(max(args.parallel, 1)) as pool:
    codes = dict(zip((r.name for r in todo), pool.map(launch, todo)))
  failed = [n for n, c in codes.items() if c != 0]
  print(f"{len(todo) - len(failed)} runs finished, {len(runs) - len(todo)} skipped (done), "
        f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''} (logs: <workdir>/log.txt)")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
