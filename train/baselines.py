"""Context-free baselines of the eval set: what a model that ignores its input scores on it.

Drawn under the learning curves so a loss or an accuracy reads against what needs no model: for text
the unigram entropy, for MQAR chance (ln(V/2) nats and 2/V: a uniform guess among the value tokens),
for classification the class prior.
"""

from collections.abc import Iterable

import numpy as np


def unigram(batches: Iterable[dict]) -> dict[str, float]:
  """{"eval_unigram_loss", "eval_unigram_accuracy"} over batches of {"targets" [B, T] or [B] int, "weights"
  (same shape)}: the entropy (nats) of the weighted target distribution and the weight of its most frequent
  target, i.e. the loss / accuracy of the best input-blind predictor fitted to these batches themselves.
  {} for float (regression or soft) targets.

  Example:
    >>> unigram([{"targets": np.array([[1, 1, 2, 3]]), "weights": np.array([[1.0, 1.0, 1.0, 0.0]])}])
    {'eval_unigram_loss': 0.6365141682948128, 'eval_unigram_accuracy': 0.6666666666666666}
  """
  counts: dict[int, float] = {}
  for batch in batches:
    targets, weights = np.asarray(batch["targets"]), np.asarray(batch["weights"], np.float64)
    if not np.issubdtype(targets.dtype, np.integer):
      return {}
    ids, inverse = np.unique(targets, return_inverse=True)
    for i, w in zip(ids.tolist(), np.bincount(inverse.ravel(), weights=weights.ravel()).tolist()):
      counts[i] = counts.get(i, 0.0) + w
  p = np.array([c for c in counts.values() if c > 0])
  if not p.size:
    return {}
  p = p / p.sum()
  return {"eval_unigram_loss": float(-np.sum(p * np.log(p))), "eval_unigram_accuracy": float(p.max())}
