"""Config checks that run before anything is built or compiled, each naming the key and the fix."""

import itertools
import math

import jax

import models
from models import lm
from train import mesh as mesh_lib
from train.config import ConfigError
from train.data import documents
from train.data import registry as data_registry
from train.data.tokenizer import BYTE_VOCAB, get_tokenizer
from train.optim import SCHEDULES
from train.step import LOSSES


def _require(ok: bool, msg: str) -> None:
  if not ok:
    raise ConfigError(msg)


def check_vocab(config) -> None:
  """The LM's vocabulary must hold every token id the data can produce."""
  d, vocab = config.data, config.model.vocab_size
  if d.name == "mqar":
    _require(vocab >= d.vocab_size, f"model.vocab_size={vocab} < data.vocab_size={d.vocab_size} (MQAR token "
                                    f"ids); set model.vocab_size={d.vocab_size}")
  elif d.name in ("text", "tfds_text"):
    _require(d.get("spm_model") or vocab <= BYTE_VOCAB,
             f"data.spm_model is empty, so {d.get('tfds_name') or d.get('corpus')!r} would be read as bytes "
             f"({BYTE_VOCAB} ids) by a model with vocab_size={vocab}: set data.spm_model=/path/to/tokenizer.model "
             f"(the SentencePiece model of the run's corpus), or model.vocab_size={BYTE_VOCAB} for a byte-level run")
    try:
      documents.check_vocab(vocab, get_tokenizer(d.get("spm_model", "")))
    except (ValueError, OSError) as e:
      raise ConfigError(str(e)) from None


def check_grid_extend(config) -> None:
  """train.grid_extend = ((step, grid_size), ...): steps increasing inside (0, train.steps), grid sizes
  increasing above model.grid_size, on a model with B-spline KAN layers (the only ones with knots)."""
  schedule, t, m = config.train.get("grid_extend", ()), config.train, config.model
  if not schedule:
    return
  example = "e.g. train.grid_extend=((300, 10), (600, 20)) extends the grid to 10 after step 300, to 20 after 600"
  _require(hasattr(models.lookup(m.kind), "update_grid") and m.get("layer") == "kan",
           f"train.grid_extend is set but model kind {m.kind!r} (layer {m.get('layer')!r}) has no B-spline KAN "
           "layers to extend; use model.kind='mlp' with model.layer='kan', or set train.grid_extend=()")
  _require(all(isinstance(p, list | tuple) and len(p) == 2 and all(type(v) is int for v in p) for p in schedule),
           f"train.grid_extend={schedule!r} must be (step, grid_size) pairs of ints; {example}")
  at, sizes = [p[0] for p in schedule], [p[1] for p in schedule]
  _require(all(0 < s < t.steps for s in at) and all(a < b for a, b in itertools.pairwise(at)),
           f"train.grid_extend steps {at} must increase strictly and lie inside (0, train.steps={t.steps}); {example}")
  _require(sizes[0] > m.grid_size and all(a < b for a, b in itertools.pairwise(sizes)),
           f"train.grid_extend grid sizes {sizes} must increase strictly from above model.grid_size={m.grid_size} "
           f"(grid extension goes coarse -> fine); {example}")


def validate(config, *, num_devices: int | None = None, process_count: int | None = None) -> None:
  num_devices = num_devices or jax.device_count()
  process_count = process_count or jax.process_count()
  try:
    models.lookup(config.model.kind)
    if config.model.kind == "lm":
      lm.check(config.model)
    data_registry.lookup(config.data.name)
  except ValueError as e:
    raise ConfigError(str(e)) from None

  o, t, d = config.optim, config.train, config.data
  if config.model.kind == "lm":
    check_vocab(config)
  _require(o.schedule in SCHEDULES, f"optim.schedule={o.schedule!r}; choose one of {SCHEDULES}")
  _require(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
  _require(o.grad_accum >= 1, f"optim.grad_accum must be >= 1, got {o.grad_accum}")
  _require(0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
  for name, group in o.groups.items():
    _require({"lr_mult", "weight_decay"} <= set(group.keys()),
             f"optim.groups.{name} needs lr_mult and weight_decay, has {sorted(group.keys())}")
  _require(t.loss in LOSSES, f"train.loss={t.loss!r}; choose one of {LOSSES}")
  _require(t.steps > 0, f"train.steps must be > 0, got {t.steps}")
  for key in ("log_every", "eval_every", "ckpt_every"):
    _require(t[key] > 0, f"train.{key} must be > 0, got {t[key]}")
  check_grid_extend(config)
  profile = tuple(t.get("profile_steps", ()))
  _require(not profile or (len(profile) == 2 and all(type(s) is int for s in profile)
                           and 1 <= profile[0] <= profile[1] <= t.steps),
           f"train.profile_steps={profile!r} must be () or (first, last) with 1 <= first <= last <= train.steps="
           f"{t.steps}, e.g. (10, 12) traces steps 10 to 12 (after compilation)")
  crop = d.get("augment", {}).get("random_resized_crop", 0)
  _require(not crop or crop == d.get("image_size", 0),
           f"data.augment.random_resized_crop={crop} needs data.image_size={crop} (the side every image is "
           f"brought to), got {d.get('image_size', 0)}")
  _require(d.get("read_threads", -1) >= -1,
           f"data.read_threads must be -1 (auto), 0 (read in the loop's thread) or a thread count, got "
           f"{d.get('read_threads')}")

  try:
    mesh_shape = dict(zip(mesh_lib.AXES, mesh_lib.full_shape(config.mesh.shape, num_devices,
                                                             config.mesh.get("dcn_shape"))))
  except ValueError as e:
    raise ConfigError(f"config.mesh.shape: {e}") from None
  for logical, rule in config.mesh.rules.items():
    for axis in mesh_lib.rule_axes(rule):
      _require(axis in mesh_lib.AXES, f"mesh.rules.{logical} names mesh axis {axis!r}; axes are {mesh_lib.AXES}")
  batch_axes = mesh_lib.rule_axes(config.mesh.rules.get("batch"))
  shards = 1
  for axis in batch_axes:
    shards *= mesh_shape[axis]
  multiple = math.lcm(shards * o.grad_accum, process_count)
  _require(d.batch_size % multiple == 0,
           f"data.batch_size={d.batch_size} must be divisible by the batch shards ({shards} over mesh axes "
           f"{batch_axes}) times optim.grad_accum ({o.grad_accum}), and by the processes ({process_count}); "
           f"use a multiple of {multiple}")
