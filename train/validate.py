"""Config checks that run before anything is built or compiled, each naming the key and the fix."""

import math

import jax

import models
from models import lm
from train import mesh as mesh_lib
from train.config import ConfigError
from train.data import documents
from train.data import registry as data_registry
from train.data.tokenizer import get_tokenizer
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
    try:
      documents.check_vocab(vocab, get_tokenizer(d.get("spm_model", "")))
    except (ValueError, OSError) as e:
      raise ConfigError(str(e)) from None


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

  try:
    mesh_shape = dict(zip(mesh_lib.AXES, mesh_lib.mesh_shape(config.mesh.shape, num_devices)))
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
