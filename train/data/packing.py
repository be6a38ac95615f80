"""Packing variable-length documents into fixed-length LM rows that know their documents.

`data.packing`:
  concat     documents concatenated and cut into rows of seq_len + 1 tokens (grain's ConcatThenSplit): no
             padding; a document that does not end in one row goes on in the next.
  first_fit  documents placed whole into rows (grain's first-fit packing: each document goes into the first
             of `rows` open rows with room; when one fits nowhere, the rows are emitted and refilled), the
             rest padded with segment 0. A document longer than a row is first cut into rows of seq_len + 1
             tokens overlapping by one, so every target is still predicted once.

A row of seq_len + 1 tokens becomes a shifted LM example: inputs = row[:-1], targets = row[1:], and
segment_ids / positions [T] int32 of the inputs (segments numbered from 1 within the row, 0 = padding;
positions from 0 at each segment's start). A piece of a document in a row is a document of its own to
the model (zero state, positions from 0): nothing is carried between rows. EOS belongs to the document it
ends. weights [T] float32 are 1 where the target lies in the input's document, so the EOS that ends one
document never predicts the first token of the next, and 0 on padding.

`data.document_masking = False` is the leaky baseline, for measuring what masking changes: the example
has no segment_ids / positions (the model sees each row as one sequence, positions 0..T-1) and every
target but padding is weighted.
"""

from collections.abc import Sequence

import grain
import numpy as np

PACKINGS = ("concat", "first_fit")


class SplitLongDocuments(grain.experimental.FlatMapTransform):
  """{"tokens": [n]} -> pieces of at most `length` tokens; consecutive pieces share one token (the last
  of a piece is the first of the next), so each target of a long document is in exactly one piece."""

  max_fan_out = 1 << 30  # unbounded: grain's iterator flat-map does not use it

  def __init__(self, length: int):
    self.length = length

  def flat_map(self, element: dict) -> Sequence[dict]:
    tokens = element["tokens"]
    if len(tokens) <= self.length:
      return [element]
    stride = self.length - 1
    return [{"tokens": tokens[i:i + self.length]} for i in range(0, len(tokens) - 1, stride)]


def lm_example(row: dict, *, masking: bool) -> dict[str, np.ndarray]:
  """A packed row {"tokens", "tokens_segment_ids", "tokens_positions"} [T + 1] -> a shifted LM example."""
  tokens, segments, positions = row["tokens"], row["tokens_segment_ids"], row["tokens_positions"]
  example = {"inputs": tokens[:-1], "targets": tokens[1:]}
  if not masking:
    return {**example, "weights": (segments[1:] > 0).astype(np.float32)}
  same_document = (segments[1:] == segments[:-1]) & (segments[:-1] > 0)
  return {**example, "weights": same_document.astype(np.float32), "segment_ids": segments[:-1].astype(np.int32),
          "positions": positions[:-1].astype(np.int32)}


def document_tokens(batch: dict):
  """The input tokens of a batch of packed LM examples [B, T] that belong to a document (padding excluded), as
  the array type of the batch (numpy, or jax inside a jitted step).

  With document masking, those of segment > 0. Without (the leaky baseline: no segment_ids), padding is each
  row's tail and a target weighs 0 only there, one position behind its input: a row holds its weighted targets
  + 1 document tokens, at most T.
  """
  if "segment_ids" in batch:
    return (batch["segment_ids"] > 0).sum()
  weights = batch["weights"]
  return ((weights > 0).sum(-1) + 1).clip(max=weights.shape[-1]).sum()


def pack(docs: grain.IterDataset, seq_len: int, *, packing: str, masking: bool, rows: int) -> grain.IterDataset:
  """Documents {"tokens": int32 [n]} -> LM examples of seq_len tokens (see the module docstring).

  rows: how many rows first_fit fills at once (the pipeline passes its batch size, so each batch is one
  packing round); concat ignores it.
  """
  length = {"tokens": seq_len + 1}
  if packing == "concat":
    packed = grain.experimental.ConcatThenSplitIterDataset(docs, length_struct=length)
  elif packing == "first_fit":
    pieces = grain.experimental.FlatMapIterDataset(docs, SplitLongDocuments(seq_len + 1))
    packed = grain.experimental.FirstFitPackIterDataset(pieces, length_struct=length, num_packing_bins=rows,
                                                         shuffle_bins=False)
  else:
    raise ValueError(f"data.packing={packing!r}; choose one of {PACKINGS}")
  return packed.map(lambda row: lm_example(row, masking=masking))
