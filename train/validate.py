"""Config checks that run before anything is built or compiled, each naming the key, the value and the fix.

Every numeric option has its valid range declared once, in NUMERIC_OPTIONS; options a config does not
have are skipped (the model kinds and data sources have different sections).
"""

import dataclasses
import math

import jax

import models
from models import lm
from train import hooks
from train import mesh as mesh_lib
from train.config import ConfigError
from train.data import documents, local_text_builder
from train.data import registry as data_registry
from train.data.packing import PACKINGS
from train.data.tokenizer import BYTE_VOCAB, get_tokenizer
from train.optim import DECAY_SHAPES, SCHEDULES
from train.step import LOSSES


def _require(ok: bool, msg: str) -> None:
  if not ok:
    raise ConfigError(msg)


@dataclasses.dataclass(frozen=True)
class Range:
  """The valid values of a numeric option: finite, within [lo, hi] (open ends excluded), integral if `integer`."""

  lo: float = -math.inf
  hi: float = math.inf
  lo_open: bool = False
  hi_open: bool = False
  integer: bool = False
  note: str = ""  # what special values mean, e.g. "0 disables clipping"

  def __contains__(self, v) -> bool:
    if isinstance(v, bool) or not isinstance(v, int if self.integer else int | float) or not math.isfinite(v):
      return False
    return (self.lo < v if self.lo_open else self.lo <= v) and (v < self.hi if self.hi_open else v <= self.hi)

  def __str__(self) -> str:
    kind = "an integer" if self.integer else "a finite number"
    if math.isfinite(self.lo) and math.isfinite(self.hi):
      bounds = f" in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
    elif math.isfinite(self.lo):
      bounds = f" {'>' if self.lo_open else '>='} {self.lo:g}"
    else:
      bounds = ""
    return kind + bounds + (f" ({self.note})" if self.note else "")


COUNT = Range(1, integer=True)  # sizes, step counts, intervals
POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)
MOMENTUM = Range(0, 1, hi_open=True)

NUMERIC_OPTIONS: dict[str, Range] = {
  "seed": Range(integer=True),
  "model.vocab_size": COUNT, "model.d_model": COUNT, "model.n_heads": COUNT, "model.d_ff": COUNT,
  "model.n_kv_heads": Range(0, integer=True, note="0 means model.n_heads"),
  "model.head_dim": Range(0, integer=True, note="0 means model.d_model // model.n_heads"),
  "model.patch_size": COUNT, "model.in_channels": COUNT, "model.n_classes": COUNT, "model.n_outputs": COUNT,
  "model.in_features": Range(0, integer=True, note="0 infers it from the data"),
  "model.grid_size": COUNT, "model.order": Range(0, integer=True), "model.reg_weight": NON_NEGATIVE,
  "model.kernel_size": COUNT,
  "data.batch_size": COUNT, "data.seq_len": COUNT, "data.vocab_size": COUNT, "data.num_pairs": COUNT,
  "data.num_queries": Range(0, integer=True, note="0 means data.num_pairs"),
  "data.train_examples": COUNT, "data.eval_examples": COUNT, "data.max_files": Range(0, integer=True, note="0: all"),
  "data.image_size": Range(0, integer=True, note="0 keeps the stored size"),
  "data.augment.random_resized_crop": Range(0, integer=True, note="0: off"),
  "data.augment.crop_padding": Range(0, integer=True, note="0: off"),
  "data.augment.erase_prob": FRACTION, "data.augment.mixup_alpha": NON_NEGATIVE,
  "data.augment.cutmix_alpha": NON_NEGATIVE, "data.augment.num_classes": Range(0, integer=True),
  "optim.lr": POSITIVE, "optim.warmup_steps": Range(0, integer=True), "optim.decay_fraction": FRACTION,
  "optim.decay_steps": Range(0, integer=True, note="0: decay_fraction"),
  "optim.min_lr_ratio": FRACTION, "optim.b1": MOMENTUM, "optim.b2": MOMENTUM,
  "optim.eps": Range(0, lo_open=True, note="0 turns a zero gradient into 0/0 = NaN"),
  "optim.weight_decay": NON_NEGATIVE, "optim.clip_norm": Range(0, note="0 disables clipping"),
  "optim.grad_accum": COUNT,
  "train.steps": COUNT, "train.log_every": COUNT, "train.eval_every": COUNT, "train.eval_steps": COUNT,
  "train.ckpt_every": COUNT, "train.keep_ckpts": COUNT, "train.label_smoothing": Range(0, 1, hi_open=True),
  "train.kan_grid.update_every": Range(0, integer=True, note="0: never"),
  "train.kan_grid.update_until": Range(0, integer=True, note="0: until the end"),
  "train.device_memory_gib": Range(0, note="0: ask the device"),
  "distributed.num_processes": Range(0, integer=True, note="0: from the environment"),
  "distributed.process_id": Range(-1, integer=True, note="-1: from the environment"),
}
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def _get(config, key: str):
  """The value at dotted `key`, or KeyError when the config has no such option."""
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def check_ranges(config) -> None:
  """Every numeric option the config has lies in its declared range (optim.groups.* included)."""
  ranges = dict(NUMERIC_OPTIONS)
  for name in config.optim.get("groups", {}):
    ranges[f"optim.groups.{name}.lr_mult"] = NON_NEGATIVE
    ranges[f"optim.groups.{name}.weight_decay"] = NON_NEGATIVE
  for key, valid in ranges.items():
    try:
      value = _get(config, key)
    except (KeyError, AttributeError):
      continue
    _require(value in valid, f"{key}={value!r} is out of range; set it to {valid}")


def check_model_shapes(config) -> None:
  """Head counts that divide the width, and float compute / parameter dtypes."""
  m = config.model
  for key in ("dtype", "param_dtype"):
    if key in m:
      _require(m[key] in FLOAT_DTYPES, f"model.{key}={m[key]!r} is not a supported float dtype; use one of "
                                       f"{FLOAT_DTYPES}")
  if "n_heads" not in m:
    return
  if not m.get("head_dim", 0):
    _require(m.d_model % m.n_heads == 0,
             f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads} (head width = d_model / "
             f"n_heads); set model.d_model to a multiple of {m.n_heads}, change model.n_heads, or set model.head_dim")
  kv = m.get("n_kv_heads", 0)
  _require(not kv or m.n_heads % kv == 0,
           f"model.n_kv_heads={kv} does not divide model.n_heads={m.n_heads} (each key/value head serves a "
           f"group of query heads); use a divisor of {m.n_heads} or 0 (one per query head)")


def check_corpus(config) -> None:
  """A local text corpus exists, has non-empty files, and puts some in each split (validation is ~2% of
  files by path hash)."""
  d = config.data
  if d.name != "text":
    return
  corpus, pattern = d.get("corpus", "stdlib"), d.get("pattern", "*.py")
  root = local_text_builder.corpus_dir(corpus)
  _require(root.is_dir(), f"data.corpus={corpus!r}: {root} is not a directory; set data.corpus to 'stdlib' or a "
                          "directory of text files")
  files = [p for p in local_text_builder.corpus_files(root, pattern, d.get("max_files", 0)) if p.stat().st_size]
  _require(bool(files), f"data.corpus={corpus!r} has no non-empty files matching data.pattern={pattern!r} under "
                        f"{root}; point data.corpus at text files or change data.pattern")
  validation = sum(local_text_builder.is_validation(str(p.relative_to(root))) for p in files)
  _require(0 < validation < len(files),
           f"data.corpus={corpus!r}: of its {len(files)} files, {validation} fall in the validation split (about "
           f"{local_text_builder.VALIDATION_PERCENT}% by path hash); both splits need files: add files to the corpus "
           "or raise data.max_files")


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
  parametrization = config.model.get("parametrization", "sp")
  _require(parametrization == "sp" or config.model.kind == "lm",
           f"model.parametrization={parametrization!r} is implemented for model.kind='lm' only, got "
           f"model.kind={config.model.kind!r}; set model.parametrization='sp'")

  o, t, d = config.optim, config.train, config.data
  for name, group in o.groups.items():
    _require({"lr_mult", "weight_decay"} <= set(group.keys()),
             f"optim.groups.{name} needs lr_mult and weight_decay, has {sorted(group.keys())}")
  check_ranges(config)
  check_model_shapes(config)
  if config.model.kind == "lm":
    check_vocab(config)
  check_corpus(config)
  _require(o.schedule in SCHEDULES, f"optim.schedule={o.schedule!r}; choose one of {SCHEDULES}")
  _require(o.get("decay_shape", "linear") in DECAY_SHAPES,
           f"optim.decay_shape={o.get('decay_shape')!r}; choose one of {DECAY_SHAPES}")
  _require(t.loss in LOSSES, f"train.loss={t.loss!r}; choose one of {LOSSES}")
  hooks.validate(config)
  profile = tuple(t.get("profile_steps", ()))
  _require(not profile or (len(profile) == 2 and all(type(s) is int for s in profile)
                           and 1 <= profile[0] <= profile[1] <= t.steps),
           f"train.profile_steps={profile!r} must be () or (first, last) with 1 <= first <= last <= train.steps="
           f"{t.steps}, e.g. (10, 12) traces steps 10 to 12 (after compilation)")
  top_ks = t.get("eval_top_k", ())
  _require(all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in top_ks),
           f"train.eval_top_k={top_ks!r} must be a tuple of expert counts >= 1, e.g. (1, 2, 4, 8)")
  crop = d.get("augment", {}).get("random_resized_crop", 0)
  _require(not crop or crop == d.get("image_size", 0),
           f"data.augment.random_resized_crop={crop} needs data.image_size={crop} (the side every image is "
           f"brought to), got {d.get('image_size', 0)}")
  _require(d.packing in PACKINGS, f"data.packing={d.packing!r}; choose one of {PACKINGS}")
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
  # Each process loads the rows its devices hold (train.mesh.row_group): whole batch shards, or one shard
  # shared by several processes (e.g. split along T over a "sequence" axis across hosts).
  per_process, per_shard = num_devices // process_count, num_devices // shards
  _require(per_process % per_shard == 0 or per_shard % per_process == 0,
           f"each process's {per_process} devices must hold whole batch shards ({per_shard} devices each, over mesh "
           f"axes {batch_axes}) or share one with other processes; change config.mesh.shape")
  multiple = shards * o.grad_accum
  _require(d.batch_size % multiple == 0,
           f"data.batch_size={d.batch_size} must be divisible by the batch shards ({shards} over mesh axes "
           f"{batch_axes}) times optim.grad_accum ({o.grad_accum}); use a multiple of {multiple}")
  check_sequence_axis(config, mesh_shape["sequence"])


def check_sequence_axis(config, shards: int) -> None:
  """mesh.shape.sequence > 1 (sequence parallelism) splits [B, T] token batches along T over the "sequence"
  axis: an LM only, T a multiple of the axis size, and the "length" rule naming that axis."""
  if shards == 1:
    return
  fix = "set mesh.shape.sequence=1"
  _require(config.model.kind == "lm", f"mesh.shape.sequence={shards} splits the sequence of token batches; it needs "
                                      f"model.kind='lm', got {config.model.kind!r}; {fix}")
  seq_len = config.data.seq_len
  _require(seq_len % shards == 0, f"data.seq_len={seq_len} must be a multiple of mesh.shape.sequence={shards} "
                                  f"(each shard holds T / {shards} tokens); use data.seq_len="
                                  f"{-(-seq_len // shards) * shards} or {fix}")
  _require(mesh_lib.rule_axes(config.mesh.rules.get("length")) == ("sequence",),
           f"mesh.rules.length={config.mesh.rules.get('length')!r} must be 'sequence' when mesh.shape.sequence="
           f"{shards}: the layers split T over that axis")
