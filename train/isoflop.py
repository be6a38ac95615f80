"""Planning an isoFLOP study: for each FLOP budget, 5-9 model sizes and the steps that spend the budget.

Compute per run is the model's analytic training FLOPs (`train.mfu`: 3 x forward, the mixer's own work
included, so softmax attention at long context costs more per token than linear attention), not 6 N D.
Parameters N are the model's total parameter count (what the loop logs as `params`). An experiment file's
`sweep(add, arg)` calls `add_runs(add, config, budgets, shapes)` once per variant; `python -m train.sweep
--dry-run` lists each run's shape, parameters, tokens and FLOPs (`run_size`).
"""

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Sequence

import ml_collections

from train import config as config_lib

TOKENS_PER_PARAM = 20.0  # where a budget's sizes are centred: Chinchilla's compute-optimal ratio
MIN_SIZES, MAX_SIZES = 5, 9


@dataclasses.dataclass(frozen=True)
class Size:
  """What one config trains: parameters, FLOPs per token (training), tokens per step."""

  params: int
  flops_per_token: float
  tokens_per_step: int


@functools.cache
def _size_of(model_json: str, seq_len: int, batch_size: int) -> Size:
  import jax
  from flax import nnx

  import models
  from train import mfu

  cfg = ml_collections.ConfigDict(json.loads(model_json))
  model = nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0)))
  params = sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  per_token = mfu.train_flops_per_step(model, seq_len=seq_len, batch_size=1) / seq_len
  return Size(params=params, flops_per_token=per_token, tokens_per_step=seq_len * batch_size)


def size(config) -> Size:
  """Parameters and analytic training FLOPs per token of an LM config (shapes only, nothing allocated)."""
  if config.model.kind != "lm":
    raise config_lib.ConfigError(f"model.kind={config.model.kind!r}: isoFLOP planning needs analytic FLOPs per "
                                 "token, which only LMs have; set model.kind='lm'")
  return _size_of(config.model.to_json(sort_keys=True), config.data.seq_len, config.data.batch_size)


def run_size(config) -> dict | None:
  """{"params", "tokens", "flops"} a run of `config` trains with (None for models other than LMs)."""
  if config.model.kind != "lm":
    return None
  s = size(config)
  tokens = s.tokens_per_step * config.train.steps
  return {"params": s.params, "tokens": tokens, "flops": s.flops_per_token * tokens}


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  budget: float
  overrides: dict  # the shape's overrides + train.steps
  params: int
  tokens: int
  flops: float


def _with(config, overrides: dict):
  c = config.copy_and_resolve_references()
  for key, value in overrides.items():
    config_lib.set_value(c, key, value)
  return c


def plan(config, budgets: Sequence[float], shapes: Sequence[dict], *, sizes: int = 7,
         tokens_per_param: float = TOKENS_PER_PARAM) -> list[PlannedRun]:
  """Per budget C, `sizes` consecutive shapes of `shapes` (dicts of dotted config overrides, smallest model
  first) centred where tokens / params is nearest `tokens_per_param`, each trained for the steps that spend
  C (rounded to whole steps, so a run's compute is C within half a step). ConfigError naming the budget when
  fewer than `sizes` shapes fit (each needs at least twice optim.warmup_steps steps).

  Example:
    >>> from experiments import common
    >>> shapes = [{"model.d_model": d, "model.d_ff": 3 * d} for d in (16, 24, 32, 48, 64, 96)]
    >>> runs = plan(common.lm_config("tiny"), [1e12], shapes, sizes=5)
    >>> len(runs), all(abs(r.flops / 1e12 - 1) < 0.05 for r in runs)
    (5, True)
  """
  if not MIN_SIZES <= sizes <= MAX_SIZES:
    raise config_lib.ConfigError(f"sizes={sizes}: an isoFLOP budget needs {MIN_SIZES}-{MAX_SIZES} model sizes")
  measured = [size(_with(config, shape)) for shape in shapes]
  if any(b.params >= a.params for a, b in zip(measured[1:], measured)):
    raise config_lib.ConfigError("shapes must be ordered from the smallest model to the largest")
  min_steps = 2 * config.optim.warmup_steps
  out = []
  for budget in budgets:
    steps = [round(budget / (s.flops_per_token * s.tokens_per_step)) for s in measured]
    usable = [i for i, n in enumerate(steps) if n >= max(min_steps, 1)]
    if len(usable) < sizes:
      raise config_lib.ConfigError(
        f"budget {budget:.3g} FLOPs: only {len(usable)} of the shapes get at least {max(min_steps, 1)} steps (twice "
        f"optim.warmup_steps), need {sizes}; raise the budget, add smaller shapes or lower optim.warmup_steps")
    ratio = [abs(math.log(steps[i] * measured[i].tokens_per_step / measured[i].params / tokens_per_param))
             for i in usable]
    centre = ratio.index(min(ratio))
    first = min(max(centre - sizes // 2, 0), len(usable) - sizes)
    for i in usable[first:first + sizes]:
      s, n = measured[i], steps[i]
      out.append(PlannedRun(budget=budget, overrides={**shapes[i], "train.steps": n}, params=s.params,
                            tokens=n * s.tokens_per_step, flops=n * s.tokens_per_step * s.flops_per_token))
  return out


def add_runs(add: Callable, config, budgets: Sequence[float], shapes: Sequence[dict], *, extra: dict | None = None,
             **options) -> list[PlannedRun]:
  """`add(**overrides)` every run of `plan(config, budgets, shapes, **options)`, each with `extra` (e.g. the
  variant's keys) first; returns the plan."""
  runs = plan(config, budgets, shapes, **options)
  for r in runs:
    add(**(extra or {}), **r.overrides)
  return runs
