"""AdamW with warmup + cosine / WSD / constant schedules, clipping, decay mask and parameter groups.

Groups come from parameter metadata: `optim_group="activation"` (learnable activation
coefficients), `"no_decay"` (norms, gates, biases), else "default". 0/1-D parameters never decay.
`config.optim.groups.<name>` sets a group's lr multiplier and weight decay.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

SCHEDULES = ("cosine", "wsd", "constant")
DECAY_SHAPES = ("linear", "1-sqrt")


def _decay(peak: float, floor: float, steps: int, shape: str) -> optax.Schedule:
  """peak -> floor over `steps`: linear, or 1-sqrt (floor + (peak - floor)(1 - sqrt(t / steps)), the cooldown
  shape that does best in Hägele et al., 2024)."""
  if shape == "linear":
    return optax.linear_schedule(peak, floor, steps)
  if shape == "1-sqrt":
    return lambda t: floor + (peak - floor) * (1 - jnp.sqrt(jnp.clip(t / steps, 0.0, 1.0)))
  raise ValueError(f"optim.decay_shape must be one of {DECAY_SHAPES}, got {shape!r}")


def defaults() -> ml_collections.ConfigDict:
  """The base config's `optim` section."""
  return ml_collections.ConfigDict(dict(
    lr=3e-4, schedule="cosine", warmup_steps=100, min_lr_ratio=0.1,
    decay_fraction=0.2, decay_steps=0, decay_shape="linear",  # wsd: the decay (decay_steps > 0 overrides fraction)
    b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0, grad_accum=1,
    groups=ml_collections.ConfigDict({
      "activation": ml_collections.ConfigDict(dict(lr_mult=1.0, weight_decay=0.0)),
    }),
  ))


def schedule(cfg, total_steps: int) -> optax.Schedule:
  """lr(step): linear warmup to cfg.lr, then cosine / WSD / constant down to lr * min_lr_ratio.

  Warmup is lr * (step + 1) / warmup_steps, so the very first update already moves the parameters.
  WSD holds the peak and decays over the last decay_steps (0: decay_fraction of the steps after warmup) with
  decay_shape, so a WSD run branched at step s into a decay of k steps (train/cooldowns.py) follows exactly
  the schedule of a WSD run of s + k steps.
  """
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
  warmup = min(cfg.warmup_steps, total_steps)
  peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
  rest = max(total_steps - warmup, 1)
  if cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, rest, alpha=cfg.min_lr_ratio)
  elif cfg.schedule == "wsd":  # warmup-stable-decay: hold the peak, then decay at the end
    decay = min(cfg.decay_steps or max(int(rest * cfg.decay_fraction), 1), rest)
    after = optax.join_schedules(
      [optax.constant_schedule(peak), _decay(peak, floor, decay, cfg.decay_shape)], [rest - decay])
  else:
    after = optax.constant_schedule(peak)
  if warmup == 0:
    return after
  ramp = optax.linear_schedule(peak / warmup, peak, max(warmup - 1, 1))
  return optax.join_schedules([ramp, after], [warmup])


def group_labels(params: nnx.State) -> dict:
  """Pure-dict pytree of group names, one per parameter."""
  flat = []
  for path, var in nnx.to_flat_state(params):
    group = var.get_metadata().get("optim_group") or ("no_decay" if len(var.shape) <= 1 else "default")
    flat.append((path, group))
  return nnx.to_pure_dict(nnx.from_flat_state(flat))


def group_settings(cfg, groups: set[str]) -> dict[str, tuple[float, float]]:
  """(lr multiplier, weight decay) for each group that occurs."""
  out = {}
  for g in groups:
    if g == "default":
      out[g] = (1.0, cfg.weight_decay)
    elif g in cfg.groups:
      out[g] = (cfg.groups[g].lr_mult, cfg.groups[g].weight_decay)
    elif g == "no_decay":
      out[g] = (1.0, 0.0)
    else:
      raise ValueError(f"parameters are tagged optim_group={g!r} but config.optim.groups has no {g!r}; "
                       f"add config.optim.groups.{g} = dict(lr_mult=1.0, weight_decay=0.0)")
  return out


def make(cfg, params: nnx.State, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer for abstract or concrete `params` (an nnx.State of Params)."""
  labels = group_labels(params)
  settings = group_settings(cfg, set(jax.tree.leaves(labels)))
  lr = schedule(cfg, total_steps)

  def adamw(mult: float, wd: float) -> optax.GradientTransformation:
    return optax.adamw(lambda step: lr(step) * mult, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd)

  tx = optax.multi_transform({g: adamw(*s) for g, s in settings.items()}, labels)
  if cfg.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
  return tx, lr


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def restart(tx: optax.GradientTransformation, params, step: jax.Array) -> optax.OptState:
  """A new optimizer state for `params` whose lr schedules continue at `step`.

  For parameters whose shapes changed (KAN grid extension): fresh Adam moments and bias correction,
  i.e. a new optimizer per grid as pykan and the KAN paper use, without rewinding warmup or decay.
  """
  def continue_at_step(s):
    return s._replace(count=jnp.asarray(step, s.count.dtype)) if _is_schedule(s) else s

  return jax.tree.map(continue_at_step, tx.init(params), is_leaf=_is_schedule)


def _is_schedule(s) -> bool:
  return isinstance(s, optax.ScaleByScheduleState)
