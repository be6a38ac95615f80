"""Variable-length token documents that the pipeline packs into fixed-length LM examples."""

import dataclasses

import grain
import numpy as np


@dataclasses.dataclass(frozen=True)
class Documents:
  """A source of {"tokens": int32 [n]} documents (each ending with EOS), packed to seq_len + 1."""

  docs: grain.MapDataset
  seq_len: int


def tokenized(ds: grain.MapDataset, field: str, tokenizer) -> grain.MapDataset:
  """Map records with text in `field` to {"tokens": ids + [eos]}."""

  def encode(record) -> dict[str, np.ndarray]:
    ids = tokenizer.encode(record[field])
    return {"tokens": np.append(ids, np.int32(tokenizer.eos_id)).astype(np.int32)}

  return ds.map(encode)


def check_vocab(model_vocab: int, tokenizer) -> None:
  if model_vocab < tokenizer.vocab_size:
    raise ValueError(f"model.vocab_size={model_vocab} is smaller than the tokenizer's vocabulary "
                     f"({tokenizer.vocab_size}); set model.vocab_size >= {tokenizer.vocab_size}")
