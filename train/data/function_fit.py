"""Function fitting (KAN paper toy tasks): inputs uniform in [-1, 1]^n, targets f(x) [1], for regression.

Functions (`data.function`):
  exp_sin        f(x, y) = exp(sin(pi x) + y^2)
  xy             f(x, y) = x y
  bessel         f(x) = J0(20 x)                     (Bessel function of the first kind)
  composition4   f(x1..x4) = exp(1/2 (sin(pi (x1^2 + x2^2)) + sin(pi (x3^2 + x4^2))))
Train and eval sets are fixed draws (`data.train_examples`, `data.eval_examples`, seeded by
`data.dataset_seed` and the split), so the test RMSE of every run is measured on the same points.
"""

import grain
import numpy as np
import scipy.special

FUNCTIONS = {
  "exp_sin": (2, lambda x: np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)),
  "xy": (2, lambda x: x[:, 0] * x[:, 1]),
  "bessel": (1, lambda x: scipy.special.j0(20 * x[:, 0])),
  "composition4": (4, lambda x: np.exp(0.5 * (np.sin(np.pi * (x[:, 0] ** 2 + x[:, 1] ** 2))
                                              + np.sin(np.pi * (x[:, 2] ** 2 + x[:, 3] ** 2))))),
}


def function_arrays(function: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs [n, n_vars], targets [n, 1]) float32 for `function`, drawn with `seed`."""
  if function not in FUNCTIONS:
    raise ValueError(f"unknown function {function!r}; known: {sorted(FUNCTIONS)}")
  n_vars, fn = FUNCTIONS[function]
  x = np.random.default_rng(seed).uniform(-1.0, 1.0, (n, n_vars))
  return x.astype(np.float32), fn(x)[:, None].astype(np.float32)


class _Examples:
  def __init__(self, x: np.ndarray, y: np.ndarray):
    self.x, self.y = x, y

  def __len__(self) -> int:
    return len(self.x)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"inputs": self.x[i], "targets": self.y[i], "weights": np.float32(1.0)}


def source(cfg, *, split: str, seed: int) -> grain.MapDataset:
  del seed  # the sets are fixed by data.dataset_seed so every run sees the same points
  train = split == cfg.train_split
  n = cfg.get("train_examples", 1000) if train else cfg.get("eval_examples", 1000)
  base = cfg.get("dataset_seed", 0)
  return grain.MapDataset.source(_Examples(*function_arrays(cfg.function, n, base + (0 if train else 1))))
