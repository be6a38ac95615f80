"""KAN grid schedule (B-spline KAN layers, Liu et al. 2024), a training hook (train/hooks.py).

Config `train.kan_grid`:
  update_every N   refit the knots to the step's inputs every N steps (0: never); shapes unchanged, the
                   represented functions kept by a least-squares refit of the spline coefficients;
  update_until S   ... until step S (0: until the end);
  extend ((STEP, G), ...)   extend every KAN grid to G intervals after STEP (coarse -> fine, function kept by
                   least squares): the step is logged and evaluated on the old grid, then the run continues
                   with the new shapes, a fresh optimizer state (new Adam moments) and the lr schedule where it
                   was. A resume builds the grid in force at its checkpoint (`config_at`).
"""

import itertools

import jax
import ml_collections
import optax
from flax import nnx

import models
from train import hooks, optim
from train.config import ConfigError


def make_grid_update(graphdef, grid_size: int | None = None, tx: optax.GradientTransformation | None = None):
  """(state, batch) -> state whose KAN grids are refit to the batch's inputs, the represented
  functions kept by a least-squares refit of the spline coefficients.

  grid_size None (grid update): same shapes, the optimizer state carries over. A larger grid_size
  (grid extension): the spline kernels grow, so the optimizer state is restarted by `tx`, the
  optimizer built for the new shapes (fresh Adam moments, lr schedule continued at the state's step).
  """

  def grid_update(state: dict, batch: dict) -> dict:
    model = nnx.merge(graphdef, state["params"], state["rest"])
    model.update_grid(batch["inputs"], grid_size)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    new = {**state, "params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest)}
    if grid_size is not None:
      new["opt_state"] = optim.restart(tx, new["params"], state["step"])
    return new

  return grid_update


def config_at(config, step: int):
  """`config` with model.grid_size set to the KAN grid in force after `step` steps: the size of the
  last train.kan_grid.extend entry (at, size) with at <= step, else the initial one. A pure function of
  the schedule, so a resumed run builds the extended shapes before restoring into them."""
  sizes = [size for at, size in config.train.kan_grid.extend if at <= step]
  if not sizes:
    return config
  config = config.copy_and_resolve_references()
  config.model.grid_size = sizes[-1]
  return config


def extend_grid(program, config, state: dict, batch: dict, build):
  """Grid extension to config.model.grid_size: (the program `build(config, mesh)` makes for the new shapes,
  `state` (laid out for `program`) moved onto it with every KAN layer's grid refit to batch["inputs"]
  (a global batch laid out by program.batch_sharding))."""
  new = build(config, program.mesh)
  extend = jax.jit(make_grid_update(program.setup.graphdef, config.model.grid_size, new.tx),
                   in_shardings=(program.setup.shardings, program.batch_sharding),
                   out_shardings=new.setup.shardings)
  return new, extend(state, batch)


class KanGrid(hooks.Hook):
  """Grid updates every `update_every` steps (until `update_until`) and extensions at the `extend` steps."""

  def __init__(self, config, build):
    super().__init__(config, build)
    self.cfg = config.train.kan_grid
    self.extensions = {at for at, _ in self.cfg.extend}
    self._updates = {}  # id(program) -> its jitted grid update

  @staticmethod
  def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(update_every=0, update_until=0, extend=()))

  @staticmethod
  def validate(config) -> None:
    """train.kan_grid.extend = ((step, grid_size), ...): steps increasing inside (0, train.steps), grid sizes
    increasing above model.grid_size, on a model with B-spline KAN layers (the only ones with knots)."""
    schedule, t, m = config.train.kan_grid.extend, config.train, config.model
    if not schedule:
      return
    key = "train.kan_grid.extend"
    example = f"e.g. {key}=((300, 10), (600, 20)) extends the grid to 10 after step 300, to 20 after 600"
    _require(hasattr(models.lookup(m.kind), "update_grid") and m.get("layer") == "kan",
             f"{key} is set but model kind {m.kind!r} (layer {m.get('layer')!r}) has no B-spline KAN "
             f"layers to extend; use model.kind='mlp' with model.layer='kan', or set {key}=()")
    _require(all(isinstance(p, list | tuple) and len(p) == 2 and all(type(v) is int for v in p) for p in schedule),
             f"{key}={schedule!r} must be (step, grid_size) pairs of ints; {example}")
    at, sizes = [p[0] for p in schedule], [p[1] for p in schedule]
    _require(all(0 < s < t.steps for s in at) and all(a < b for a, b in itertools.pairwise(at)),
             f"{key} steps {at} must increase strictly and lie inside (0, train.steps={t.steps}); {example}")
    _require(sizes[0] > m.grid_size and all(a < b for a, b in itertools.pairwise(sizes)),
             f"{key} grid sizes {sizes} must increase strictly from above model.grid_size={m.grid_size} "
             f"(grid extension goes coarse -> fine); {example}")

  def config_at(self, config, step: int):
    return config_at(config, step)

  def check(self, program) -> None:
    if not self.cfg.update_every:
      return
    if not hasattr(program.setup.abstract_model, "update_grid"):
      raise ConfigError(f"train.kan_grid.update_every is set but model kind {self.config.model.kind!r} has no "
                        "update_grid (KAN layers); set it to 0")
    self._updates[id(program)] = jax.jit(make_grid_update(program.setup.graphdef),
                                         in_shardings=(program.setup.shardings, program.batch_sharding),
                                         out_shardings=program.setup.shardings, donate_argnums=0)

  def update(self, program):
    """The jitted (state, batch) -> state grid update of `program` (checked), or None without updates."""
    return self._updates.get(id(program))

  def after_update(self, step: int, program, state: dict, batch: dict) -> dict:
    c = self.cfg
    due = c.update_every and step % c.update_every == 0 and (not c.update_until or step <= c.update_until)
    if due and step not in self.extensions:  # an extension refits the knots itself
      state = self._updates[id(program)](state, batch)
    return state

  def log_now(self, step: int) -> bool:
    return step in self.extensions  # the old grid's last loss and eval

  def after_log(self, step: int, program, state: dict, batch: dict):
    if step not in self.extensions:
      return program, state
    new, state = extend_grid(program, config_at(self.config, step), state, batch, self.build)
    self._updates.pop(id(program), None)
    return new, state

  def record(self, config) -> dict:
    return {"grid_size": config.model.grid_size} if self.cfg.extend else {}


def _require(ok: bool, msg: str) -> None:
  if not ok:
    raise ConfigError(msg)
