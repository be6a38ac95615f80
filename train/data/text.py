"""Byte-level text from local files (default: Python's standard library), via the LocalText TFDS builder."""

import fcntl
import functools
import os
from collections.abc import Callable

import grain
import jax
from jax.experimental import multihost_utils

from train.data.documents import Documents, tokenized
from train.data.local_text_builder import LocalText, default_data_dir
from train.data.tokenizer import get_tokenizer


def prepare(make_builder: Callable[[], LocalText], data_dir: str) -> None:
  """Build the ArrayRecord files once; a file lock keeps parallel runs (sweeps) from racing. The builder is made
  under the lock: one made before another process finished preparing would hold that process's empty splits."""
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".local_text.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      make_builder().download_and_prepare()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def source(cfg, *, split: str, seed: int) -> Documents:
  del seed  # order is decided by the pipeline
  data_dir = cfg.data_dir or default_data_dir()
  make_builder = functools.partial(LocalText, corpus=cfg.get("corpus", "stdlib"), pattern=cfg.get("pattern", "*.py"),
                                   max_files=cfg.get("max_files", 0), data_dir=data_dir)
  if jax.process_index() == 0:
    prepare(make_builder, data_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("ablax_local_text_prepared")
  docs = grain.MapDataset.source(make_builder().as_data_source(split=split))  # reads the prepared splits
  return Documents(tokenized(docs, "text", get_tokenizer(cfg.get("spm_model", ""))), cfg.seq_len)
