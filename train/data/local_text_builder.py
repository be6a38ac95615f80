"""A TFDS builder that turns local text files into ArrayRecord shards (no TensorFlow needed).

Corpus "stdlib" is the running Python's standard-library sources, so the quickstart needs no
download; any other corpus is a directory (every file matching `pattern`, recursively).
Each file is one example; a stable hash of its relative path puts ~2% in "validation".
Corpus "stdlib_docstrings" makes each docstring of those sources (module, class, function) an example:
11k short English documents (median 69 bytes, 2.3 MB), for studies where documents must be shorter
than a training row (document masking, experiments/packing.py); a file's docstrings share its split.
"""

import ast
import hashlib
import os
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

VALIDATION_PERCENT = 2
DOCSTRINGS = "stdlib_docstrings"


def corpus_dir(corpus: str) -> Path:
  return Path(sysconfig.get_paths()["stdlib"]) if corpus in ("stdlib", DOCSTRINGS) else Path(corpus).expanduser()


def docstrings(source: bytes) -> list[bytes]:
  """The non-empty docstrings of a Python module and its classes and functions; [] if it does not parse."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # invalid escapes in some test sources
    try:
      tree = ast.parse(source)
    except (SyntaxError, ValueError):
      return []
  kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
  return [d.encode() for n in ast.walk(tree) if isinstance(n, kinds) and (d := ast.get_docstring(n))]


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
    self._pattern, self._max_files, self._docstrings = pattern, max_files, corpus == DOCSTRINGS
    key = f"{self._root.resolve()}|{pattern}|{max_files}" + ("|docstrings" if self._docstrings else "")
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
      if self._docstrings:
        for i, doc in enumerate(docstrings(data)):
          yield f"{rel}:{i}", {"text": np.frombuffer(doc, np.uint8), "path": rel}
      elif data:
        yield rel, {"text": np.frombuffer(data, np.uint8), "path": rel}


def default_data_dir() -> str:
  return os.environ.get("ABLAX_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "ablax", "tfds"))
