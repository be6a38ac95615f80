"""Implicit-neural-representation tasks (coordinates -> values), for SIREN / Snake / FKAN comparisons.

`data.task`:
  image      an image shipped with scikit-learn (`data.image`: "china.jpg" or "flower.jpg"), area-averaged to
             `data.resolution`² pixels; inputs the pixel-centre coordinates in [-1, 1]², targets RGB in
             [-1, 1] (SIREN's convention). Train and eval are the same pixels: the task is representing the
             image, scored by PSNR = 10 log10(2² / MSE).
  periodic   1-D periodic extrapolation (Snake's setting): f(x) = sin(x) + 0.5 sin(2x) + 0.25 cos(3x);
             train on `data.train_examples` points of [-2π, 2π], eval on `data.eval_examples` points of
             [2π, 6π] (never seen): the eval MSE is the extrapolation error.
Generated in memory from fixed draws (`data.dataset_seed`), so every run sees the same points.
"""

import functools
import math

import grain
import numpy as np

from train.data import registry

TASKS = ("image", "periodic")


def periodic_target(x: np.ndarray) -> np.ndarray:
  return np.sin(x) + 0.5 * np.sin(2 * x) + 0.25 * np.cos(3 * x)


@functools.cache
def image_arrays(image: str, resolution: int) -> tuple[np.ndarray, np.ndarray]:
  """(coordinates [R², 2], RGB [R², 3]) float32 of the scikit-learn sample image, centre-cropped square."""
  datasets = registry.toy_dataset_module("sklearn.datasets", "inr")
  img = datasets.load_sample_image(image).astype(np.float64) / 255.0  # [H, W, 3]
  side = min(img.shape[:2])
  top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
  f = side // resolution
  img = img[top:top + f * resolution, left:left + f * resolution]
  img = img.reshape(resolution, f, resolution, f, 3).mean(axis=(1, 3))  # area average
  c = (np.arange(resolution) + 0.5) / resolution * 2 - 1
  yy, xx = np.meshgrid(c, c, indexing="ij")
  coords = np.stack([yy, xx], -1).reshape(-1, 2)
  return coords.astype(np.float32), (img.reshape(-1, 3) * 2 - 1).astype(np.float32)


def periodic_arrays(n: int, lo: float, hi: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  x = np.sort(np.random.default_rng(seed).uniform(lo, hi, n))[:, None]
  return x.astype(np.float32), periodic_target(x).astype(np.float32)


class _Examples:
  def __init__(self, x: np.ndarray, y: np.ndarray):
    self.x, self.y = x, y

  def __len__(self) -> int:
    return len(self.x)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"inputs": self.x[i], "targets": self.y[i], "weights": np.float32(1.0)}


def source(cfg, *, split: str, seed: int) -> grain.MapDataset:
  del seed  # fixed sets: every run is scored on the same points
  task = cfg.get("task", "image")
  if task not in TASKS:
    raise ValueError(f"data.task must be one of {TASKS}, got {task!r}")
  if task == "image":
    return grain.MapDataset.source(_Examples(*image_arrays(cfg.get("image", "china.jpg"),
                                                           cfg.get("resolution", 64))))
  train = split == cfg.train_split
  n = cfg.get("train_examples", 1000) if train else cfg.get("eval_examples", 1000)
  lo, hi = (-2 * math.pi, 2 * math.pi) if train else (2 * math.pi, 6 * math.pi)
  return grain.MapDataset.source(_Examples(*periodic_arrays(n, lo, hi, cfg.get("dataset_seed", 0) + (not train))))
