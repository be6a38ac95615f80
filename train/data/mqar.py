"""Multi-query associative recall (MQAR, Zoology): index-addressed, deterministic examples.

A sequence opens with `num_pairs` key-value pairs `k1 v1 k2 v2 ...`, then a query region where
`num_queries` of those keys reappear at random even offsets; every other query-region token is 0.
Keys come from [1, V/2), values from [V/2, V); keys and values in one example are distinct.
The weighted positions are the query keys, whose target is the value: loss and accuracy count only
those. As in Zoology, an answer is only a target, never an input: were the values written after their
query keys, a model could answer the last queries by elimination (the one context value not yet
repeated) without recalling anything; softmax attention finds that shortcut and stalls near 0.57 at
4 pairs (1/4, 1/3, 1/2 and 1 for the 1st..4th query), the misordering of issue 18.
Elsewhere the target is the next input token, with weight 0.
"""

import grain
import numpy as np

_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


class MQAR:
  """Random-access MQAR examples: {"inputs" [L] int32, "targets" [L] int32, "weights" [L] float32}."""

  def __init__(self, *, vocab_size: int, num_pairs: int, num_queries: int, seq_len: int,
               num_examples: int, seed: int, split: str):
    num_queries = num_queries or num_pairs
    if vocab_size < 4 or num_pairs > vocab_size // 2 - 1:
      raise ValueError(f"MQAR needs num_pairs ({num_pairs}) <= vocab_size/2 - 1 ({vocab_size // 2 - 1}) "
                       "distinct keys; raise data.vocab_size or lower data.num_pairs")
    if num_queries > num_pairs:
      raise ValueError(f"MQAR num_queries ({num_queries}) must be <= num_pairs ({num_pairs})")
    if 2 * num_pairs + 2 * num_queries > seq_len + 1:
      raise ValueError(f"MQAR with {num_pairs} pairs and {num_queries} queries needs seq_len >= "
                       f"{2 * num_pairs + 2 * num_queries - 1}, got {seq_len}; raise data.seq_len")
    if split not in _SPLIT_IDS:
      raise ValueError(f"MQAR split must be one of {list(_SPLIT_IDS)}, got {split!r}")
    self.vocab_size, self.num_pairs, self.num_queries = vocab_size, num_pairs, num_queries
    self.seq_len, self.num_examples = seq_len, num_examples
    self.seed, self.split_id = seed, _SPLIT_IDS[split]

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.split_id, int(index)])
    half = self.vocab_size // 2
    keys = rng.choice(np.arange(1, half), size=self.num_pairs, replace=False)
    values = rng.choice(np.arange(half, self.vocab_size), size=self.num_pairs, replace=False)
    seq = np.zeros(self.seq_len + 1, np.int32)
    seq[0:2 * self.num_pairs:2] = keys
    seq[1:2 * self.num_pairs:2] = values
    # Query slots: disjoint (key, value) position pairs in the region after the context.
    region = self.seq_len + 1 - 2 * self.num_pairs
    slots = np.sort(rng.choice(region // 2, size=self.num_queries, replace=False)) * 2 + 2 * self.num_pairs
    asked = rng.choice(self.num_pairs, size=self.num_queries, replace=False)
    seq[slots] = keys[asked]
    targets = seq[1:].copy()
    targets[slots] = values[asked]
    weights = np.zeros(self.seq_len, np.float32)
    weights[slots] = 1.0
    return {"inputs": seq[:-1], "targets": targets, "weights": weights}


def data_config(*, vocab_size: int = 256, num_pairs: int = 16, seq_len: int = 128, num_queries: int = 0) -> dict:
  """The `config.data` fields of an MQAR run (to `config.data.update(...)` with; the model's vocab_size must
  be at least vocab_size)."""
  return dict(name="mqar", seq_len=seq_len, vocab_size=vocab_size, num_pairs=num_pairs, num_queries=num_queries,
              train_examples=100_000, eval_examples=1_000)


def source(cfg, *, split: str, seed: int) -> grain.MapDataset:
  n = cfg.train_examples if split == cfg.train_split else cfg.eval_examples
  return grain.MapDataset.source(MQAR(
    vocab_size=cfg.vocab_size, num_pairs=cfg.num_pairs, num_queries=cfg.num_queries,
    seq_len=cfg.seq_len, num_examples=n, seed=seed, split=split))
