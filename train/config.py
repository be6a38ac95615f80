"""Loading, overriding, validating and saving run configs.

`--config experiments/FILE.py[:ARG]` calls the file's `get_config(ARG)`; `--config DIR/config.json`
relaunches a saved run. `--config.a.b=v` overrides a field; unknown keys and wrong types fail here,
naming the key and close matches, before anything is built or compiled.
"""

import ast
import difflib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import ml_collections
from etils import epath

from train import paths

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# Keys that moved since runs were saved (old dotted key -> new one); `upgrade` applies them.
MOVED = {
  "train.grid_update_every": "train.kan_grid.update_every",
  "train.grid_update_until": "train.kan_grid.update_until",
  "train.grid_extend": "train.kan_grid.extend",
}

# Keys added after runs began saving config.json, each with the value that reproduces what a run saved before
# it existed did (not always today's default: before data.document_masking, rows were the leaky baseline).
PREDATED = {"data.packing": "concat", "data.document_masking": False}


class ConfigError(ValueError):
  """A config problem the user can fix; the message says what and how."""


def run_defaults() -> dict[str, ml_collections.ConfigDict]:
  """The sections every run has whatever its model, with their defaults from the modules that read them."""
  from train import loop, optim  # they import this module
  from train import mesh as mesh_lib
  from train.data import pipeline

  return {"data": pipeline.defaults(), "optim": optim.defaults(), "train": loop.defaults(),
          "mesh": mesh_lib.defaults(), "distributed": loop.distributed_defaults()}


def base_config(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A run's config: seed 0, the `model` section (from models/, e.g. models.lm.lm_model_config()) and every
  other section with its defaults (run_defaults())."""
  return ml_collections.ConfigDict(dict(seed=0, model=model, **run_defaults()))


def upgrade(saved: dict) -> tuple[dict, list[str]]:
  """A config dict saved by an earlier version in today's layout, and the PREDATED keys it lacked: moved keys
  (MOVED) at their new place, missing PREDATED keys at what runs did before them, other keys added since to the
  run_defaults() sections at their defaults. Today's configs pass unchanged."""
  saved, added = json.loads(json.dumps(saved)), []
  for old, new in MOVED.items():
    *parents, leaf = old.split(".")
    node = saved
    for part in parents:
      node = node.get(part, {})
    if leaf in node:
      *new_parents, new_leaf = new.split(".")
      target = saved
      for part in new_parents:
        target = target.setdefault(part, {})
      target[new_leaf] = node.pop(leaf)

  def fill(node: dict, defaults: dict) -> None:
    for key, value in defaults.items():
      if key not in node:
        node[key] = value
      elif isinstance(value, dict) and isinstance(node[key], dict):
        fill(node[key], value)

  for key, value in PREDATED.items():
    *parents, leaf = key.split(".")
    node = saved
    for part in parents:
      node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf not in node:
      node[leaf] = value
      added.append(key)
  fill(saved, {k: v.to_dict() for k, v in run_defaults().items()})
  return saved, added


def _import_file(path: epath.Path):
  if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))
  spec = importlib.util.spec_from_file_location(f"_ablax_experiment_{path.stem}", os.fspath(path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def split_spec(spec: str) -> tuple[epath.Path, str | None]:
  """'experiments/gla.py:local' -> (path, 'local'); 'gs://bucket/run/config.json' -> (path, None)."""
  scheme, sep, rest = spec.rpartition("://")
  path, _, arg = rest.partition(":")
  return paths.path(scheme + sep + path), (arg or None)


def load_module(spec: str):
  path, _ = split_spec(spec)
  if not path.exists():
    raise ConfigError(f"config file {path} does not exist (from --config {spec})")
  return _import_file(path)


def load(spec: str) -> ml_collections.ConfigDict:
  """The locked ConfigDict named by an experiment spec or a saved config.json (one saved before a key
  existed gets the value that key's absence meant, with a note)."""
  path, arg = split_spec(spec)
  if path.suffix == ".json":
    if not path.exists():
      raise ConfigError(f"config file {path} does not exist")
    tree, added = upgrade(json.loads(path.read_text()))
    if added:
      print(f"note: {path} predates {', '.join(added)}; using " + ", ".join(f"{k}={PREDATED[k]!r}" for k in added)
            + ", what runs did before these keys existed", file=sys.stderr)
    config = ml_collections.ConfigDict(tree)
  else:
    module = load_module(spec)
    if not hasattr(module, "get_config"):
      raise ConfigError(f"{path} defines no get_config(arg); every experiment file must")
    config = module.get_config(arg)
  config.lock()
  return config


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    full = f"{prefix}{key}"
    keys.append(full)
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(flat_keys(value, full + "."))
  return keys


def _parse_value(text: str, current: Any) -> Any:
  if isinstance(current, bool):
    low = text.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ValueError(f"expected a bool, got {text!r}")
  if isinstance(current, str):
    return text
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def locate(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
  """(parent section, leaf name) of dotted `key`; a ConfigError naming close matches if absent."""
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate([*parents, leaf]):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      close = difflib.get_close_matches(key, flat_keys(config), n=3, cutoff=0.5)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      where = ".".join([*parents, leaf][:i]) or "the config"
      raise ConfigError(f"unknown config key {key!r} ({part!r} is not in {where}).{hint}")
    if i < len(parents):
      node = node[part]
  return node, leaf


def override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Set dotted `key` from its command-line text, keeping the field's type."""
  node, leaf = locate(config, key)
  current = node[leaf]
  if isinstance(current, ml_collections.ConfigDict):
    raise ConfigError(f"config key {key!r} is a section; override one of its fields, e.g. {key}.<field>=...")
  try:
    value = _parse_value(text, current)
    with node.unlocked():
      node[leaf] = value
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config key {key!r} expects {type(current).__name__} (now {current!r}); "
                      f"cannot use {text!r}: {e}") from None


def set_value(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Set dotted `key` to a Python value (a dict replaces a whole section), keeping leaf types."""
  node, leaf = locate(config, key)
  try:
    with node.unlocked():
      node[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config key {key!r} (now {node[leaf]!r}) cannot be set to {value!r}: {e}") from None


def apply_overrides(config: ml_collections.ConfigDict, args: list[str]) -> None:
  """Apply `--config.a.b=v` (or `--config.a.b v`) arguments in order."""
  i = 0
  while i < len(args):
    arg = args[i]
    if not arg.startswith("--config."):
      raise ConfigError(f"unrecognised argument {arg!r}; overrides look like --config.optim.lr=1e-3")
    key, eq, value = arg[len("--config."):].partition("=")
    if not eq:
      if i + 1 >= len(args):
        raise ConfigError(f"{arg} needs a value: {arg}=VALUE")
      value = args[i + 1]
      i += 1
    override(config, key, value)
    i += 1


def save(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Write the resolved config to workdir/config.json (atomically)."""
  workdir = paths.path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  paths.write_atomic(workdir / "config.json", config.to_json(indent=2, sort_keys=True))
