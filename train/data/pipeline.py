"""The one input pipeline: source -> process shard -> shuffle (seeded) -> repeat -> [augment] -> [pack]
-> batch -> [mixup / cutmix].

Order is a pure function of (seed, step), and the iterator's position is a small JSON-able
state saved in every checkpoint, so a resumed run sees exactly the batches it would have.
Each process reads its own shard (every process_count-th example) and builds batch_size /
process_count examples per step.
"""

import grain
import ml_collections

from train.data import registry
from train.data.augment import batch_transform, example_transform
from train.data.documents import Documents
from train.data.packing import pack


def defaults() -> ml_collections.ConfigDict:
  """The base config's `data` section (each source adds its own keys: train/data/registry.py)."""
  return ml_collections.ConfigDict(dict(
    name="text", seq_len=256, batch_size=16, eval_split="validation", train_split="train",
    data_dir="", read_threads=-1,  # -1: 0 (read in the loop's thread) for in-memory sources, else 16
    image_size=0,  # tfds_images: bring images to image_size x image_size (0: as stored)
    # text sources (train/data/packing.py): packing "concat" (documents concatenated, cut into rows) or
    # "first_fit" (whole documents per row, padded); document_masking: nothing crosses a document boundary
    # (segment_ids / positions to the model, cross-document targets unweighted); False = the leaky baseline
    packing="concat", document_masking=True,
    augment=ml_collections.ConfigDict(dict(random_resized_crop=0, crop_padding=0, flip=False, erase_prob=0.0,
                                           mixup_alpha=0.0, cutmix_alpha=0.0, num_classes=0)),
  ))


def read_options(cfg) -> grain.ReadOptions:
  """data.read_threads threads read (and augment) examples ahead; -1 picks 0 for in-memory sources
  (read in the iterating thread) and grain's default pool of 16 for file-backed ones."""
  threads = cfg.get("read_threads", -1)
  if threads < 0:
    threads = 0 if cfg.name in registry.IN_MEMORY else 16
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=500 if threads else 0)


def pads(cfg) -> bool:
  """Whether examples can hold padding: documents packed first_fit (count them with packing.document_tokens)."""
  return cfg.name in registry.DOCUMENTS and cfg.packing == "first_fit"


def build(cfg, *, split: str, seed: int, train: bool, batch_size: int, process_index: int = 0,
          process_count: int = 1) -> grain.DatasetIterator:
  """An infinite iterator of numpy batches {"inputs", "targets", "weights"} for this process; packed text
  adds "segment_ids" and "positions" when data.document_masking is on (train/data/packing.py).

  cfg: the `config.data` section; batch_size: the per-process batch.
  """
  src = registry.lookup(cfg.name)(cfg, split=split, seed=seed)
  if isinstance(src, Documents) != (cfg.name in registry.DOCUMENTS):
    raise TypeError(f"data source {cfg.name!r} returns a {type(src).__name__}: list it in train/data/registry.py's "
                    "DOCUMENTS exactly when it returns Documents")
  ds = src.docs if isinstance(src, Documents) else src
  if len(ds) < process_count:
    raise ValueError(f"data split {split!r} of {cfg.name!r} has {len(ds)} records, fewer than "
                     f"{process_count} processes")
  ds = ds[process_index::process_count]
  augment = cfg.get("augment") if train else None
  if train:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(None)
  if (per_example := example_transform(augment)) is not None:
    ds = ds.random_map(per_example, seed=seed + 1)
  it = ds.to_iter_dataset(read_options(cfg))
  if isinstance(src, Documents):
    it = pack(it, src.seq_len, packing=cfg.packing, masking=cfg.document_masking, rows=batch_size)
  it = it.batch(batch_size, drop_remainder=True)
  if (per_batch := batch_transform(augment)) is not None:
    it = it.random_map(per_batch, seed=seed + 2 + process_index)
  return iter(it)
