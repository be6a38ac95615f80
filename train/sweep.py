"""Run an experiment's grid: python -m train.sweep --config experiments/FILE.py[:ARG] [--config.a.b=v ...] [options].

The experiment file's `sweep(add)` (or `sweep(add, arg)`, given the ARG after the colon) calls
`add(**{"dotted.key": value, ...})` once per run (layer types x sizes x seeds x lrs ...).
`--config.a.b=v` overrides apply to every run first, then each run's own overrides. Each run gets
its own workdir, named from its overrides, under --root (default runs/<file>[-<arg>]); its resolved
config is written there before it starts. Finished runs (summary.json present) are skipped;
interrupted ones resume from their checkpoints, with the config they were trained with: a sweep whose
config for such a run changed in a key that is not benign (train/config_changes.py) refuses before anything
is written or launched, unless `--resume_with_changes=KEY,...` names the key (then every run gets that option).

--parallel N runs N local processes; on a GPU host each gets its own GPUs (CUDA_VISIBLE_DEVICES),
or, with fewer GPUs than runs, an equal share of one GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION).
--emit writes a launch script instead of running: `tpu-vm` ships this source tree to every worker of
a TPU VM, installs it and starts the runs one after another, detached, each run's log in its workdir
(run the script again to resume); `slurm` submits one array task per run, N nodes each, one process
per node started by srun with jax.distributed initialised from SLURM's environment; `shell` lists
the commands. Scaling past one machine is JAX's own multi-host runtime (jax.distributed).
"""

import argparse
import concurrent.futures
import dataclasses
import hashlib
import inspect
import math
import os
import queue
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence

from train import config as config_lib
from train import paths
from train.loop import SUMMARY

EMIT_KINDS = ("tpu-vm", "slurm", "shell")


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


def expand(spec: str, root: str | None = None, common: Sequence[str] = ()) -> list[Run]:
  """The runs of the experiment's sweep(), each checked against the config (with the `--config.a.b=v`
  overrides `common` applied first) now, before anything runs."""
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
    resolve(spec, overrides, common)  # fail now, before anything runs, on a bad key or value
    name = run_name(overrides)
    if name in seen:
      raise config_lib.ConfigError(f"sweep defines run {name!r} twice: {overrides}")
    seen.add(name)
    runs.append(Run(name, overrides, os.path.join(root, name)))
  return runs


def resolve(spec: str, overrides: dict, common: Sequence[str] = ()):
  """The run's config: the experiment's, then the `--config.a.b=v` overrides `common`, then the run's own."""
  config = config_lib.load(spec)
  config_lib.apply_overrides(config, list(common))
  for key, value in overrides.items():
    config_lib.set_value(config, key, value)
  return config


def describe(config, sizes: bool = True) -> str:
  """One line of what a run trains: model shape, data, batch and steps (and, with `sizes`, an LM's parameters,
  tokens and analytic FLOPs, from its abstract model: about a second per paper-scale model)."""
  m, d = config.model, config.data
  shape = [f"{m.kind}"]
  if "blocks" in m:
    from models.block_pattern import parse

    shape.append(f"{len(parse(m.blocks))} layers")
  shape += [f"d_model={m.d_model}" if "d_model" in m else "", f"{m.get('dtype', 'float32')}"]
  data = d.get("tfds_name") or d.get("corpus") or ""
  from train import isoflop

  size = isoflop.run_size(config) if sizes else None  # LMs: parameters, tokens and analytic training FLOPs
  return (" ".join(x for x in shape if x) + f"; data {d.name}{f' ({data})' if data else ''}, batch {d.batch_size}"
          + (f" x {d.seq_len}" if m.kind == "lm" else "") + f", {config.train.steps} steps"
          + (f"; {size['params']:,} params, {size['tokens']:.3g} tokens, {size['flops']:.3g} FLOPs" if size else ""))


def command(run: Run, extra: Sequence[str] = ()) -> list[str]:
  return [sys.executable, "-m", "train", "--config", os.path.join(run.workdir, "config.json"),
          "--workdir", run.workdir, *extra]


def checked(spec: str, run: Run, common: Sequence[str] = (), accept: Sequence[str] = ()):
  """The run's resolved config, validated; a ConfigError if it cannot run.

  Checked without starting a JAX backend (on a GPU host that would take the memory the runs need), so against
  a mesh of exactly the sizes the config fixes; the run checks its real device count itself. An interrupted
  run must resume with the config.json it was trained with, except for benign keys and those named in
  `accept` (--resume_with_changes): any other change is refused, naming each key with both values.
  """
  from train import config_changes, validate

  config = resolve(spec, run.overrides, common)
  fixed = math.prod(s for s in config.mesh.shape.values() if s > 0) * math.prod(config.mesh.dcn_shape.values())
  validate.validate(config, num_devices=fixed, process_count=1)
  config_changes.check_names(config, list(accept))
  saved = paths.path(run.workdir) / "config.json"
  if run.status == "interrupted" and saved.exists():
    config_changes.accepted(config_lib.load(str(saved)).to_dict(), config.to_dict(), list(accept),
                            workdir=run.workdir, step=None)
  return config


def prepare(spec: str, run: Run, common: Sequence[str] = (), accept: Sequence[str] = ()) -> None:
  """Write the run's checked config (`checked`) so the launch command needs nothing but its workdir."""
  config_lib.save(checked(spec, run, common, accept), run.workdir)


def visible_gpus() -> list[str]:
  """The GPU ids this host offers (CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list), found without
  starting JAX here."""
  listed = os.environ.get("CUDA_VISIBLE_DEVICES")
  if listed is not None:
    return [g.strip() for g in listed.split(",") if g.strip()]
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=60)
  except (OSError, subprocess.TimeoutExpired):
    return []
  return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def run_env(slot: int, parallel: int, gpus: Sequence[str]) -> dict[str, str]:
  """Environment of the run in worker slot `slot` (0 .. parallel-1) on a host with `gpus`.

  With at least as many GPUs as slots, each slot owns len(gpus) // parallel of them (JAX preallocates
  on those only). With fewer, slots share GPUs round-robin and each preallocates an equal share of
  90% of its GPU's memory, so no run takes memory another one needs. No GPUs: nothing to set.
  """
  if not gpus or parallel <= 1:
    return {}
  if len(gpus) >= parallel:
    per = len(gpus) // parallel
    return {"CUDA_VISIBLE_DEVICES": ",".join(gpus[slot * per:(slot + 1) * per])}
  sharing = math.ceil(parallel / len(gpus))  # runs per GPU, at most
  return {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)], "XLA_PYTHON_CLIENT_PREALLOCATE": "true",
          "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / sharing:.3f}"}


def launch(run: Run, env: dict[str, str] | None = None, extra: Sequence[str] = ()) -> int:
  """Run one training process with `env` added and `extra` arguments; its output goes to WORKDIR/log.txt
  (a remote log is written when it ends)."""
  env = {**os.environ, "PYTHONPATH": str(config_lib.PROJECT_ROOT), **(env or {})}
  log = paths.path(run.workdir) / "log.txt"
  if paths.is_remote(log):
    done = subprocess.run(command(run, extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)
    paths.append(log, done.stdout)
    return done.returncode
  with log.open("a") as f:
    return subprocess.run(command(run, extra), stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def run_local(runs: list[Run], parallel: int, gpus: Sequence[str], extra: Sequence[str] = ()) -> dict[str, int]:
  """Run `runs` in `parallel` worker slots, each run with its slot's environment and `extra` arguments;
  {name: return code}."""
  parallel = max(parallel, 1)
  slots: queue.SimpleQueue = queue.SimpleQueue()
  for slot in range(parallel):
    slots.put(slot)

  def in_slot(run: Run) -> int:
    slot = slots.get()
    try:
      return launch(run, run_env(slot, parallel, gpus), extra)
    finally:
      slots.put(slot)

  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    return dict(zip((r.name for r in runs), pool.map(in_slot, runs)))


def _bash_array(name: str, items: Sequence[str]) -> str:
  return f"{name}=(\n" + "".join(f"  {shlex.quote(x)}\n" for x in items) + ")\n"


_TPU_LAUNCH = """\
#!/usr/bin/env bash
# {n} run(s) of {spec} on TPU VM $TPU_NAME: ships this source tree to every worker, installs it
# there (the command in $ABLAX_INSTALL), then starts the runs one after another, detached (all workers run each run
# together; jax.distributed.initialize() finds the slice's hosts by itself). Each run's config is in
# its workdir under {root}, which every worker must see (gs://...); each worker's log goes to
# <workdir>/logs/<worker>.txt. Run this script again to resume: finished runs exit at once, interrupted
# ones resume from their checkpoints, and a worker whose queue is still running is left alone.
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a bash {script}
set -euo pipefail
: "${{TPU_NAME:?set TPU_NAME}}" "${{ZONE:?set ZONE}}"
: "${{ABLAX_PYTHON:=python3}}"  # the workers' Python
if [ -z "${{ABLAX_INSTALL:-}}" ]; then  # run on each worker; $SRC is the unpacked source there
  ABLAX_INSTALL='"$ABLAX_PYTHON" -m pip install -q -e "$SRC[tpu]"'
fi
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
tar -czf "$STAGE/{tag}.tar.gz" -C {src} --exclude=.git --exclude=.venv --exclude=runs --exclude=__pycache__ .
gcloud compute tpus tpu-vm scp "$STAGE/{tag}.tar.gz" "$HERE/{worker}" "$TPU_NAME":~/ --zone "$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \\
  "ABLAX_PYTHON=$(printf %q "$ABLAX_PYTHON") ABLAX_INSTALL=$(printf %q "$ABLAX_INSTALL") bash ~/{worker}"
"""

_TPU_WORKER = """\
#!/usr/bin/env bash
# On one TPU VM worker (copied to ~ and started by {script}): unpack and install the source, then run the
# sweep's runs one after another in the background. Its pid is in ~/{tag}.pid while it runs.
set -euo pipefail
cd ~
state="$(ps -o stat= -p "$(cat {tag}.pid 2>/dev/null || echo 0)" 2>/dev/null || true)"
if [ -n "$state" ] && [[ "$state" != Z* ]]; then  # alive (an unreaped zombie is not)
  echo "${{HOSTNAME:-$(hostname)}}: sweep still running (pid $(cat {tag}.pid)); left alone"
  exit 0
fi
SRC=~/{tag}
rm -rf "$SRC" && mkdir -p "$SRC" && tar -xzf {tag}.tar.gz -C "$SRC"
eval "$ABLAX_INSTALL"
{runs}\
WORKER="${{HOSTNAME:-$(hostname)}}"
nohup setsid bash -c '
  set -o pipefail
  cd ~/{tag}
  for W in "${{@:3}}"; do
    PYTHONUNBUFFERED=1 "$1" -m train --config "$W/config.json" --workdir "$W" \\
      --config.distributed.initialize=true{extra} 2>&1 | "$1" -m train.tee "$W/logs/$2.txt" \\
      || echo "run $W failed (exit $?)"
  done
  rm -f ~/{tag}.pid
' queue "$ABLAX_PYTHON" "$WORKER" "${{RUNS[@]}}" > /dev/null 2>&1 < /dev/null &
echo $! > {tag}.pid
echo "$WORKER: started ${{#RUNS[@]}} run(s), pid $!; logs in <workdir>/logs/$WORKER.txt"
"""

_SLURM = """\
#!/usr/bin/env bash
#SBATCH --job-name=ablax-{name}
#SBATCH --partition={partition}
#SBATCH --time={time}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --array=0-{last}
#SBATCH --output={output}
# {n} run(s) of {spec}: one array task per run, each on {nodes} node(s) x {gpus} GPU(s). srun starts one
# process per node; jax.distributed.initialize() takes the coordinator (the step's first node), the
# process count and this process's id from SLURM's environment. Resubmit to resume: finished runs exit
# at once, interrupted ones resume from their checkpoints.
#   sbatch {script}
set -euo pipefail
source {activate}
# All of the node's GPUs to its one process (JAX's SLURM detection alone would give it GPU $SLURM_LOCALID).
export JAX_LOCAL_DEVICE_IDS={device_ids}
export PYTHONUNBUFFERED=1
cd {src}
{runs}\
W="${{RUNS[$SLURM_ARRAY_TASK_ID]}}"
mkdir -p "$W"
srun --ntasks-per-node=1 python -m train --config "$W/config.json" --workdir "$W" \\
  --config.distributed.initialize=true{extra} 2>&1 | python -m train.tee "$W/log.txt"
"""


def emit(kind: str, runs: list[Run], root: str, *, spec: str = "", partition: str = "gpu", time: str = "24:00:00",
         nodes: int = 1, gpus_per_node: int = 8, env: str = "", extra: Sequence[str] = ()) -> str:
  """Write a launch script for `runs` into `root` (a remote root: into ./launch-<root>); returns its path
  (see the module docstring). `extra`: arguments added to every run's training command.

  slurm: `partition`, `time`, `nodes` and `gpus_per_node` per run; `env` is the virtualenv activated on
  the nodes (default: this Python's). Workdirs must be on storage every host sees.
  """
  here = f"launch-{_short(root)}" if paths.is_remote(root) else root  # the script runs from this machine
  os.makedirs(here, exist_ok=True)
  workdirs = [str(paths.path(r.workdir)) for r in runs]
  tag = "ablax-" + hashlib.sha256(str(paths.path(root)).encode()).hexdigest()[:8]  # per sweep, on the workers
  src = shlex.quote(str(config_lib.PROJECT_ROOT))
  files: dict[str, str] = {}
  args = "".join(" " + shlex.quote(x) for x in extra)
  if kind == "shell":
    cmds = [" ".join(shlex.quote(x) for x in ["python", "-m", "train", *command(r, extra)[3:]]) for r in runs]
    files["launch.sh"] = "#!/usr/bin/env bash\nset -e\ncd " + src + "\n" + "\n".join(cmds) + "\n"
  elif kind == "tpu-vm":
    worker = f"{tag}-worker.sh"
    files["launch_tpu.sh"] = _TPU_LAUNCH.format(n=len(runs), spec=spec, root=root, script="launch_tpu.sh",
                                                tag=tag, src=src, worker=worker)
    files[worker] = _TPU_WORKER.format(script="launch_tpu.sh", tag=tag, runs=_bash_array("RUNS", workdirs), extra=args)
  elif kind == "slurm":
    if nodes < 1 or gpus_per_node < 1:
      raise ValueError(f"--nodes and --gpus-per-node must be >= 1, got {nodes} and {gpus_per_node}")
    env = env or sys.prefix
    if not os.path.exists(os.path.join(env, "bin", "activate")):
      raise ValueError(f"no virtualenv at {env} (no bin/activate); pass --env DIR, the environment the nodes use")
    output = os.path.join(os.path.abspath(here), "slurm-%A_%a.out")
    files["launch.slurm"] = _SLURM.format(
      name=_short(os.path.basename(os.path.normpath(root))), partition=partition, time=time, nodes=nodes,
      gpus=gpus_per_node, last=len(runs) - 1, output=output, n=len(runs), spec=spec, script="launch.slurm",
      activate=shlex.quote(os.path.join(env, "bin", "activate")), src=src,
      device_ids=",".join(map(str, range(gpus_per_node))), runs=_bash_array("RUNS", workdirs), extra=args)
  else:
    raise ValueError(f"--emit must be one of {EMIT_KINDS}, got {kind!r}")
  for name, body in files.items():
    path = os.path.join(here, name)
    with open(path, "w") as f:
      f.write(body)
    os.chmod(path, 0o755)
  return os.path.join(here, next(iter(files)))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m train.sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="experiments/FILE.py[:ARG]")
  parser.add_argument("--root", default=None, help="parent of the run workdirs (default runs/<file>[-<arg>])")
  parser.add_argument("--parallel", type=int, default=1, help="local runs at a time (GPUs split between them)")
  parser.add_argument("--dry-run", action="store_true",
                      help="list the runs, their status, shape and (LMs) parameters, tokens and FLOPs only")
  parser.add_argument("--no-sizes", action="store_true", help="--dry-run without parameters, tokens and FLOPs "
                      "(each takes building the run's abstract model)")
  parser.add_argument("--emit", choices=EMIT_KINDS, default=None, help="write a launch script instead of running")
  parser.add_argument("--resume_with_changes", default="", metavar="KEY,...",
                      help="config keys or sections interrupted runs may resume with changed (python -m train's "
                           "option, given to every run)")
  slurm = parser.add_argument_group("--emit slurm")
  slurm.add_argument("--partition", default="gpu")
  slurm.add_argument("--time", default="24:00:00", help="time limit per run, SLURM's format")
  slurm.add_argument("--nodes", type=int, default=1, help="nodes per run (one process each)")
  slurm.add_argument("--gpus-per-node", type=int, default=8)
  slurm.add_argument("--env", default="", help="virtualenv to activate on the nodes (default: this Python's)")
  args, common = parser.parse_known_args(argv)
  try:
    runs = expand(args.config, args.root, common)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  root = args.root or default_root(args.config)
  for r in runs:
    print(f"{r.status:12} {r.workdir}  {r.overrides}")
    if args.dry_run:
      print(f"{'':12} {describe(resolve(args.config, r.overrides, common), sizes=not args.no_sizes)}")
  if args.dry_run:
    return 0
  todo = [r for r in runs if r.status != "done"]
  accept = [k for k in args.resume_with_changes.split(",") if k]
  extra = [f"--resume_with_changes={','.join(accept)}"] if accept else []
  try:  # every run checked before any config.json is written
    configs = [checked(args.config, r, common, accept) for r in todo]
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  for r, config in zip(todo, configs):
    config_lib.save(config, r.workdir)
  if args.emit:
    if not todo:
      print("every run is done; nothing to launch")
      return 0
    try:
      path = emit(args.emit, todo, root, spec=args.config, partition=args.partition, time=args.time,
                  nodes=args.nodes, gpus_per_node=args.gpus_per_node, env=args.env, extra=extra)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print(f"wrote {path} ({len(todo)} runs)")
    return 0
  codes = run_local(todo, args.parallel, visible_gpus() if args.parallel > 1 else [], extra)
  failed = [n for n, c in codes.items() if c != 0]
  print(f"{len(todo) - len(failed)} runs finished, {len(runs) - len(todo)} skipped (done), "
        f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''} (logs: <workdir>/log.txt)")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
