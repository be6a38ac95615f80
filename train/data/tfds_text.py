"""TFDS catalog text datasets (lm1b, tiny_shakespeare, c4, ...) read as ArrayRecord, tokenized and packed.

Needs the dataset already prepared in ArrayRecord format under data_dir (no TensorFlow and no
download here): a clear error says how to prepare it otherwise.
"""

import grain
import tensorflow_datasets as tfds

from train.data.documents import Documents, tokenized
from train.data.local_text_builder import default_data_dir
from train.data.tokenizer import get_tokenizer


def load_data_source(name: str, split: str, data_dir: str):
  """tfds.data_source, or a ValueError that names the dataset, data_dir and the fix."""
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types (not found, not prepared, no TF for preparation)
    raise ValueError(
      f"TFDS dataset {name!r} (split {split!r}) is not available under data_dir={data_dir!r}: "
      f"{type(e).__name__}: {str(e)[:300]}\nPrepare it once on a machine with network access, in "
      f"ArrayRecord format: `tfds build {name.split('/')[0]} --data_dir={data_dir} "
      "--file_format=array_record` (needs TensorFlow there), then copy that directory here and set "
      "data.data_dir (or ABLAX_DATA_DIR)."
    ) from None


def source(cfg, *, split: str, seed: int) -> Documents:
  del seed
  data_dir = cfg.data_dir or default_data_dir()
  ds = grain.MapDataset.source(load_data_source(cfg.tfds_name, split, data_dir))
  return Documents(tokenized(ds, cfg.get("text_field", "text"), get_tokenizer(cfg.get("spm_model", ""))),
                   cfg.seq_len)
