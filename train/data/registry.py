"""Data sources by name (`config.data.name`); one line per source, loaded on first use.

Source contract: `ctor(cfg, *, split: str, seed: int) -> grain.MapDataset` of dict examples
(numpy arrays) with keys "inputs", "targets", "weights" (loss/accuracy weights), index-addressed
and deterministic; the shared pipeline (train/data/pipeline.py) shards, shuffles, batches.
cfg is the `config.data` ConfigDict.
"""

import importlib
from types import ModuleType

from layers.registry import import_named

_SOURCES = {
  "mqar": "train.data.mqar:source",
  "text": "train.data.text:source",
  "tfds_text": "train.data.tfds_text:source",
  "mnist1d": "train.data.images:mnist1d_source",
  "digits": "train.data.images:digits_source",
  "tfds_images": "train.data.images:tfds_source",
  "function_fit": "train.data.function_fit:source",
  "inr": "train.data.inr:source",
}

# Generated or held in memory: a pool of read threads only adds overhead here (grain's bookkeeping per
# element grows with its prefetch buffer: 4x slower for function_fit's batches of 200), so the
# pipeline reads them in the iterating thread unless data.read_threads says otherwise.
IN_MEMORY = frozenset({"mqar", "mnist1d", "digits", "function_fit", "inr"})

# Sources of variable-length documents (a train.data.documents.Documents), packed into rows by the pipeline.
DOCUMENTS = frozenset({"text", "tfds_text"})


def toy_dataset_module(module: str, source: str) -> ModuleType:
  """`module` of a toy-dataset package (scikit-learn, mnist1d: the `toy` extra) that data source `source`
  needs; a ValueError naming the install command when it is missing."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ValueError(f"data.name={source!r} needs {module} from the toy-dataset packages (scikit-learn, mnist1d), "
                     "which the main install leaves out: pip install -e '.[toy]'") from None


def names() -> list[str]:
  return sorted(_SOURCES)


def lookup(name: str):
  return import_named(_SOURCES, name, "data source")
