"""Which config changes a resume accepts, and the workdir's record of the ones it accepted.

A checkpoint stores the config it was trained with. Resuming compares that config with the new one key
by key:
- BENIGN keys change how a run is watched, laid out or launched, never what it computes (progress bar,
  logging / eval / checkpoint intervals, the eval's expert counts, TensorBoard, checkpoint retention, device
  mesh and sharding rules, data-reading threads, multi-host launch settings). They are accepted without asking.
- Any other difference (shapes, optimizer, schedule length, data, seed, eval set size, ...) is refused,
  naming each key with both values, unless the run is started with `--resume_with_changes=KEY,...` naming
  it (or a section above it, e.g. `optim`). A change that alters the shape of the saved state cannot be
  resumed at all; restoring says so.
Every accepted change, benign or not, is appended to DIR/config_changes.jsonl with the step it applies from.
"""

import datetime
import json
import socket
from typing import Any

from train import config as config_lib
from train import paths
from train.config import ConfigError

HISTORY = "config_changes.jsonl"
BENIGN = ("train.progress", "train.log_every", "train.eval_every", "train.eval_top_k", "train.tensorboard",
          "train.ckpt_every", "train.keep_ckpts", "train.async_ckpt", "data.read_threads", "mesh", "distributed")
ABSENT = "(absent)"


def _under(key: str, names) -> bool:
  """`key` is one of `names` or inside one of them (a section)."""
  return any(key == n or key.startswith(n + ".") for n in names)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) and v:
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def diff(saved: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """key -> (saved value, new value) for every leaf that differs (lists and tuples compare alike)."""
  a, b = _flat(json.loads(json.dumps(saved))), _flat(json.loads(json.dumps(new)))
  pairs = {k: (a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(a.keys() | b.keys())}
  return {k: pair for k, pair in pairs.items() if pair[0] != pair[1]}


def check_names(config, accept: list[str]) -> None:
  """Every name in --resume_with_changes is a key or section of the config (close matches named if not)."""
  for name in accept:
    try:
      config_lib.locate(config, name)
    except ConfigError as e:
      raise ConfigError(f"--resume_with_changes: {e}") from None


def _show(value: Any) -> str:
  text = json.dumps(value) if value is not ABSENT else ABSENT
  return text if len(text) <= 60 else text[:57] + "..."


def accepted(saved: dict, new: dict, accept: list[str], *, workdir: str,
             step: int | None) -> dict[str, tuple[Any, Any]]:
  """The changes from the checkpoint's config `saved` to `new` that a resume takes; a ConfigError naming every
  refused key with both values and the two ways on. step None: the run's checkpoint step is not known here
  (the sweep compares with the run's config.json before launching it)."""
  changes = diff(config_lib.upgrade(saved)[0], new)  # a config saved before a key existed meant its PREDATED value
  refused = [k for k in changes if not _under(k, BENIGN) and not _under(k, accept)]
  if refused:
    listed = ", ".join(f"{k} {_show(changes[k][0])} -> {_show(changes[k][1])}" for k in refused)
    trained = "was trained" + (f" to step {step}" if step is not None else "")
    raise ConfigError(f"{workdir} {trained} with a different config: {listed}; resume with its "
                      f"config (--config {workdir}/config.json) or accept the change with "
                      f"--resume_with_changes={','.join(refused)} (recorded in {workdir}/{HISTORY})")
  return changes


def summary(changes: dict[str, tuple[Any, Any]]) -> str:
  return ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())


def record(workdir: str, step: int, changes: dict[str, tuple[Any, Any]], accept: list[str]) -> None:
  """Append the accepted changes to DIR/config_changes.jsonl."""
  entry = {
    "step": step, "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "host": socket.gethostname(), "resume_with_changes": list(accept),
    "changes": [{"key": k, "old": a, "new": b, "benign": _under(k, BENIGN)} for k, (a, b) in changes.items()],
  }
  paths.append(paths.path(workdir) / HISTORY, json.dumps(entry) + "\n")

