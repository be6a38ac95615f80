"""Method-specific training behaviour, called by the shared loop at fixed points.

The loop (train/loop.py) knows only this interface. A method that trains differently (KAN grid refits and
extensions today) brings a `Hook` subclass in its own module, registered in `HOOKS` as "module:Class" under
the name of its config section, `train.<name>` (e.g. `train.kan_grid.update_every`). Its `defaults()` give
that section in the base config; `validate(config)` checks it before anything is built. For a run, the loop
constructs every registered hook with the run's config and a `build(config, mesh) -> Program` callable, then
calls, in this order:

  config_at(config, step) -> config   whenever it needs the shapes in force after `step` steps (a fresh start,
                                       a resume before restoring, a checkpoint's model metadata); a pure
                                       function of the schedule, so a resume rebuilds what was in force.
  check(program)                       for each program built (raise ConfigError; compile the hook's own steps).
  after_update(step, program, state, batch) -> state   after the update of step `step` (1-based), before it is
                                       logged; same shapes (the program stays).
  log_now(step) -> bool                log and evaluate step `step` whatever train.log_every / eval_every say.
  after_log(step, program, state, batch) -> (program, state)   after step `step` is logged and evaluated, before
                                       it is saved; a new program (new shapes) makes the loop recount its
                                       step statistics.
  record(config) -> dict               fields logged with every record of the program built for `config`.

`batch` is the step's global batch (laid out by program.batch_sharding); `state` the train state dict
(params, rest, opt_state, step, ...). A hook keeps nothing that a resume would need: what it does at a step is
a function of the config and the step.
"""

from collections.abc import Callable
from typing import Any

import ml_collections

from layers.registry import import_named

HOOKS = {
  "kan_grid": "train.kan_grid:KanGrid",
}


class Hook:
  """No-op base: a hook overrides the points it needs."""

  def __init__(self, config, build: Callable):
    self.config, self.build = config, build

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict()

  @staticmethod
  def validate(config) -> None:
    del config

  def config_at(self, config, step: int):
    del step
    return config

  def check(self, program) -> None:
    del program

  def after_update(self, step: int, program, state: dict, batch: dict) -> dict:
    del step, program, batch
    return state

  def log_now(self, step: int) -> bool:
    del step
    return False

  def after_log(self, step: int, program, state: dict, batch: dict) -> tuple[Any, dict]:
    del step, batch
    return program, state

  def record(self, config) -> dict:
    del config
    return {}


def lookup(name: str) -> type[Hook]:
  return import_named(HOOKS, name, "training hook")


def defaults() -> dict[str, ml_collections.ConfigDict]:
  """{name: the hook's config section}, for the base config's train section."""
  return {name: lookup(name).defaults() for name in HOOKS}


def validate(config) -> None:
  for name in HOOKS:
    lookup(name).validate(config)


def for_run(config, build: Callable) -> list[Hook]:
  """Every registered hook, constructed for a run of `config`."""
  return [lookup(name)(config, build) for name in HOOKS]


def config_at(hooks: list[Hook], config, step: int):
  """`config` as every hook has it in force after `step` steps."""
  for hook in hooks:
    config = hook.config_at(config, step)
  return config
