"""Shared presets for experiment files: the base config, the paper-LM recipe, optimizer recipes, data, CPU shrink.

Every experiment's `get_config(arg)` starts from `base_config()` (so every run has every section)
and changes what its paper changes. One place decides what "local" means: `shrink_for_cpu`.
"""

import re
from collections.abc import Callable, Sequence

import ml_collections

from models import lm
from train import config as config_lib
from train.data import mqar

# Study files sweep seeds by default: LOCAL_SEEDS at CPU scale (cheap, noisy runs; the report shows mean ± std),
# one seed at paper scale unless the file says otherwise.
LOCAL_SEEDS = (0, 1)


def seeds(local: bool) -> tuple[int, ...]:
  """The seeds a study file sweeps: LOCAL_SEEDS at CPU scale, seed 0 at paper scale."""
  return LOCAL_SEEDS if local else (0,)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'local,size=340m' -> {local: True, size: '340m'} over `defaults` (typed by the defaults).

  A bare word sets a bool default to True; unknown names fail with the known ones listed.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown experiment argument {key!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"experiment argument {key!r} needs a value: {key}=...")
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes")
    elif default is None:
      out[key] = value
    else:
      out[key] = type(default)(value)
  return out


def blocks(mixer: str, ffn: str, n_layers: int) -> str:
  """A homogeneous block pattern, e.g. blocks('gla', 'swiglu', 24) == '(gla, swiglu) * 24'."""
  return f"({mixer}, {ffn}) * {n_layers}"


def base_config() -> ml_collections.ConfigDict:
  """Every section and field a run has, with defaults from their owners (the LM's in models/lm.py, the
  loop's, optimizer's, mesh's and data pipeline's in train/: train.config.base_config); experiment files
  override."""
  return config_lib.base_config(lm.lm_model_config())


def lm_config(size: str = "small") -> ml_collections.ConfigDict:
  """A byte-level LM on the embedded text corpus, with a shape from models.lm.LM_SIZES."""
  c = base_config()
  c.model = lm.lm_model_config(size)
  return c


def adamw(lr: float = 3e-4, *, warmup: int = 1000, schedule: str = "cosine", clip: float = 1.0,
          weight_decay: float = 0.1, b2: float = 0.95) -> dict:
  """An optimizer recipe to `config.optim.update(...)` with."""
  return dict(lr=lr, warmup_steps=warmup, schedule=schedule, clip_norm=clip, weight_decay=weight_decay, b2=b2)


def deit_augment(*, num_classes: int, image_size: int, resized_crop: bool) -> dict:
  """DeiT's augmentations as far as train/data/augment.py provides them, to `config.data.augment.update(...)`
  with: mixup 0.8 and cutmix 1.0 (one of the two per batch, DeiT's switch probability 0.5), horizontal
  flips, random erasing with probability 0.25, and either the random-resized crop to image_size
  (ImageNet: set data.image_size too) or, for small stored images (CIFAR), a random crop zero-padded
  by 1/8 of the side (the usual 4 px at 32). Label smoothing 0.1 is `train.label_smoothing`.
  Not available: RandAugment, repeated augmentation.
  """
  crop = dict(random_resized_crop=image_size) if resized_crop else dict(crop_padding=image_size // 8)
  return dict(flip=True, erase_prob=0.25, mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=num_classes, **crop)


def text_data(c: ml_collections.ConfigDict, *, corpus: str = "stdlib", seq_len: int = 256) -> None:
  """Byte-level text from the project's local-files TFDS builder (default: Python's stdlib sources)."""
  c.data.update(dict(name="text", seq_len=seq_len, corpus=corpus, max_files=0))


def pretraining_data(c: ml_collections.ConfigDict, *, seq_len: int = 2048, tfds_name: str = "c4/en:3.1.0",
                     vocab_size: int = 32000) -> None:
  """A paper run's pre-training text: a TFDS catalog corpus prepared as ArrayRecord under data.data_dir,
  tokenised by the SentencePiece model at data.spm_model, which the user sets (the linear-attention papers
  use Llama 2's 32000-piece tokenizer on SlimPajama / FineWeb-Edu; C4 is the stand-in the TFDS catalog
  has). Validation refuses the run while spm_model is empty rather than reading the corpus as bytes.
  """
  c.data.update(dict(name="tfds_text", tfds_name=tfds_name, seq_len=seq_len, spm_model="", text_field="text"))
  c.model.vocab_size = vocab_size


def mqar_data(c: ml_collections.ConfigDict, *, vocab_size: int = 256, num_pairs: int = 16,
              seq_len: int = 128, num_queries: int = 0) -> None:
  """Multi-query associative recall (Zoology); loss and accuracy on answer positions only."""
  c.data.update(mqar.data_config(vocab_size=vocab_size, num_pairs=num_pairs, seq_len=seq_len, num_queries=num_queries))
  c.model.vocab_size = vocab_size


def local_recall(c: ml_collections.ConfigDict) -> None:
  """The CPU-scale MQAR cell where recall mixers separate: Kimi Linear's synthetic setting scaled down, 16
  key-value pairs in 64 tokens, vocab 64, batch 32, AdamW lr 1e-3 (200 warm-up steps, no weight decay), 2000
  steps, eval on 4 batches. Measured in kimi_linear.py (2 layers, d = 64, seeds 0 and 1): KDA 1.00 / 1.00,
  Gated DeltaNet 0.90 / 0.07, Mamba-2 0.27 / 0.06 (chance 0.04), so there is room above and below a mixer."""
  mqar_data(c, vocab_size=64, num_pairs=16, seq_len=64)
  c.data.batch_size = 32
  c.optim.update(adamw(lr=1e-3, warmup=200, weight_decay=0.0))
  c.train.update(dict(steps=2000, log_every=20, eval_every=500, eval_steps=4, ckpt_every=1000))


def paper_lm(tokens: float, *, data: Callable[[ml_collections.ConfigDict], None] | None = None,
             **model) -> ml_collections.ConfigDict:
  """The linear-attention papers' LM recipe (GLA, DeltaNet, Gated DeltaNet and their hybrids): the LM with the
  `model` fields given (d_model, n_heads, d_ff, ...), pre-training text at 2K context in 0.5M-token batches
  (256 x 2048; or `data(c)` sets another task), AdamW lr 3e-4 with 1000 warmup steps, cosine, clip 1.0,
  weight decay 0.01, as many steps as `tokens` takes, at pod scale. The caller sets model.blocks."""
  c = lm_config("340m")
  c.model.update(model)
  if data is None:
    pretraining_data(c, seq_len=2048)
    c.data.batch_size = 256
  else:
    data(c)
  c.optim.update(adamw(lr=3e-4, warmup=1000, schedule="cosine", clip=1.0, weight_decay=0.01))
  c.train.steps = int(tokens // (c.data.batch_size * c.data.seq_len))
  return pod_scale(c)


def ffn_lm(size: str, local: bool) -> ml_collections.ConfigDict:
  """The LM of the FFN-replacement papers (FineDeep, MoHD): `size`'s shape with every block (attention, ffn),
  text at 2K context, AdamW lr 3e-4 with 2000 warmup steps, cosine, clip 1.0, bfloat16 compute; `local`: the
  CPU shrink (shrink_for_cpu, 300 steps) with 2 layers. The caller sets model.options.ffn."""
  c = lm_config(size=size)
  text_data(c, seq_len=2048)
  c.optim.update(adamw(lr=3e-4, warmup=2000, schedule="cosine", clip=1.0))
  if local:
    c = shrink_for_cpu(c, steps=300)
  else:
    c.model.dtype = "bfloat16"
  c.model.blocks = blocks("attention", "ffn", 2 if local else lm.LM_SIZES[size]["n_layers"])
  return c


def pod_scale(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Paper-scale defaults for TPU pods and GPU clusters: bf16 compute (parameters, optimizer state, gates,
  recurrent states and norms stay fp32), FSDP over every device (parameters, gradients and optimizer
  state sharded over the `fsdp` axis, the batch over `data` x `fsdp`) and full rematerialisation (each
  block keeps only its input; model.remat='dots' is faster where memory allows, the memory check says).
  model.scan_layers=True makes compile time flat in depth."""
  c.model.update(dict(dtype="bfloat16", param_dtype="float32", remat="full"))
  c.mesh.shape.update(dict(data=1, fsdp=-1, tensor=1, expert=1))
  return c


def config_diff(base: ml_collections.ConfigDict, other: ml_collections.ConfigDict, prefix: str = "") -> dict:
  """{dotted key: value} that turns `base` into `other` through sweep overrides; a section whose keys
  differ is one override (a dict that replaces it)."""
  if set(base) - set(other):
    raise ValueError(f"config has {sorted(set(base) - set(other))} under {prefix or 'the root'} that a variant "
                     "drops; a sweep override cannot remove keys")
  out = {}
  for key, value in other.items():
    old = base.get(key)
    if isinstance(value, ml_collections.ConfigDict) and isinstance(old, ml_collections.ConfigDict) and (
        set(value) == set(old)):
      out.update(config_diff(old, value, f"{prefix}{key}."))
    else:
      plain = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
      if plain != (old.to_dict() if isinstance(old, ml_collections.ConfigDict) else old):
        out[prefix + key] = plain
  return out


def final_evals(root: str, key: str) -> list[tuple[dict, float]]:
  """(flat config, value of `key` at the last step) of every finished run under `root`: a run still going (or
  stopped early) is left out, so a results table never mixes its intermediate evals with final ones."""
  from train import report

  out = []
  for run in report.collect(root):
    evals = [r for r in run["records"] if r.get(key) is not None]
    if evals and evals[-1]["step"] >= run["config"]["train.steps"]:
      out.append((run["config"], evals[-1][key]))
  return out


def _value(config: ml_collections.ConfigDict, key: str):
  for part in key.split("."):
    config = config[part]
  return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config


def sweep_variants(add: Callable, get_config: Callable, arg: str | None, variants: Sequence[str], local: bool) -> None:
  """add() a run for each experiment-argument variant (e.g. "mixer=gla") and each of `seeds(local)`.

  A variant's run sets the keys in which get_config(f"{arg},{variant}") differs from get_config(arg) (or
  from another variant) to that variant's values, so each run is exactly the variant's single-run config
  at the scale `arg` names: paper shapes and data at paper scale, CPU ones with `local`. Every run sets
  the same keys (run names, report columns); a section whose keys differ between variants is one key.
  """
  base = get_config(arg)
  configs = [get_config(",".join(filter(None, (arg, v)))) for v in variants]
  changed = dict.fromkeys(k for c in configs for k in config_diff(base, c))
  keys = [k for k in changed if not any(k.startswith(p + ".") for p in changed)]
  for config in configs:
    for seed in seeds(local):
      add(**{k: _value(config, k) for k in keys}, seed=seed)


def shrink_for_cpu(c: ml_collections.ConfigDict, *, steps: int = 300, n_layers: int = 2) -> ml_collections.ConfigDict:
  """The `:local` variant: a model and run small enough to train on 2 CPU cores in minutes: fp32 on a
  data-parallel mesh, and a pre-training corpus replaced by the embedded byte-level one."""
  c.model.update(dict(d_model=64, n_heads=2, n_kv_heads=0, head_dim=0, d_ff=192, dtype="float32",
                      param_dtype="float32", remat="none", scan_layers=False))
  c.mesh.shape.update(dict(data=-1, fsdp=1, tensor=1, expert=1))
  if c.data.name == "tfds_text":
    text_data(c, seq_len=c.data.seq_len)
    c.model.vocab_size = 256
  c.model.blocks = _resize_pattern(c.model.blocks, n_layers)
  c.data.update(dict(seq_len=min(c.data.seq_len, 128), batch_size=16))
  c.optim.update(dict(warmup_steps=min(c.optim.warmup_steps, steps // 10), lr=max(c.optim.lr, 1e-3)))
  c.train.update(dict(steps=steps, log_every=10, eval_every=max(steps // 3, 1), eval_steps=4,
                      ckpt_every=max(steps // 3, 1)))
  return c


def _resize_pattern(pattern: str, n_layers: int) -> str:
  """'(x, y) * 24' -> '(x, y) * n_layers'; other patterns are kept as written."""
  m = re.fullmatch(r"\s*(\([^()]*\))\s*\*\s*\d+\s*", pattern)
  return f"{m.group(1)} * {n_layers}" if m else pattern
