"""A TFDS builder that turns local text files into ArrayRecord shards (no TensorFlow needed).

Corpus "stdlib" is the running Python's standard-library sources, so the quickstart needs no
download; any other corpus is a directory (every file matching `pattern`, recursively).
Each file is one example; a stable hash of its relative path puts ~2% in "validation".
"""

import hashlib
import os
import sysconfig
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

VALIDATION_PERCENT = 2


def corpus_dir(corpus: str) -> Path:
  return Path(sysconfig.get_paths()["stdlib"]) if corpus == "stdlib" else Path(corpus).expanduser()


def corpus_files(root: Path, pattern: str, max_files: int) -> list[Path]:
  files = sorted(p for p in root.rglob(pattern) if p.is_file() and "site-packages" not in p.parts)
  return files[:max_files] if max_files else files


def is_validation(rel: str) -> bool:
  return int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 100 < VALIDATION_PERCENT


class LocalText(tfds.core.GeneratorBasedBuilder):
  """Local text files as examples {"text": uint8 bytes, "path": relative path}."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, corpus: str = "stdlib", pattern: str = "*.py", max_files: int = 0, **kwargs):
    self._root = corpus_dir(corpus)
    if not self._root.is_dir():
      raise FileNotFoundError(f"text corpus directory {self._root} does not exist; set data.corpus to "
                              "'stdlib' or a directory of text files")
    self._pattern, self._max_files = pattern, max_files
    key = f"{self._root.resolve()}|{pattern}|{max_files}"
    config = tfds.core.BuilderConfig(name="c" + hashlib.sha256(key.encode()).hexdigest()[:12],
                                     description=key)
    super().__init__(config=config, file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"Text files under {self._root} matching {self._pattern}",
      features=tfds.features.FeaturesDict({
        "text": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
        "path": tfds.features.Text(),
      }),
    )

  def _split_generators(self, dl_manager):
    files = corpus_files(self._root, self._pattern, self._max_files)
    if not files:
      raise FileNotFoundError(f"no files matching {self._pattern!r} under {self._root}")
    rels = [(str(p.relative_to(self._root)), p) for p in files]
    return {
      "train": self._generate_examples([r for r in rels if not is_validation(r[0])]),
      "validation": self._generate_examples([r for r in rels if is_validation(r[0])]),
    }

  def _generate_examples(self, rels):
    for rel, path in rels:
      data = path.read_bytes()
      if data:
        yield rel, {"text": np.frombuffer(data, np.uint8), "path": rel}


def default_data_dir() -> str:
  return os.environ.get("ABLAX_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "ablax", "tfds"))
