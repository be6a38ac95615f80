"""Image / signal classification sources: MNIST-1D and sklearn digits (local), TFDS image datasets.

Examples are {"inputs": float32 [..., C], "targets": int32 [], "weights": float32 []}; inputs are
channels-last ([L, 1] for MNIST-1D, [H, W, C] for images) and standardised.
"""

import os

import grain
import numpy as np

from train.data import registry
from train.data.augment import resize_center_crop
from train.data.local_text_builder import default_data_dir
from train.data.tfds_text import load_data_source


class ArrayExamples:
  """Random access over in-memory (inputs, labels) arrays."""

  def __init__(self, inputs: np.ndarray, labels: np.ndarray):
    self.inputs, self.labels = inputs.astype(np.float32), labels.astype(np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"inputs": self.inputs[i], "targets": self.labels[i], "weights": np.float32(1.0)}


def _is_train(cfg, split: str) -> bool:
  return split == cfg.train_split


def mnist1d_arrays(data_dir: str, seed: int = 42, num_samples: int = 5000) -> dict[str, np.ndarray]:
  """Generate MNIST-1D locally with the `mnist1d` package (cached as .npz in data_dir)."""
  path = os.path.join(data_dir, f"mnist1d_seed{seed}_n{num_samples}.npz")
  if not os.path.exists(path):
    mnist1d = registry.toy_dataset_module("mnist1d.data", "mnist1d")
    args = mnist1d.get_dataset_args()
    args.seed, args.num_samples = seed, num_samples
    d = mnist1d.make_dataset(args)
    os.makedirs(data_dir, exist_ok=True)
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(tmp, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
    os.replace(tmp, path)
  with np.load(path) as d:
    return {k: d[k] for k in d.files}


def mnist1d_source(cfg, *, split: str, seed: int) -> grain.MapDataset:
  del seed
  d = mnist1d_arrays(cfg.data_dir or default_data_dir(), cfg.get("dataset_seed", 42))
  x, y = (d["x"], d["y"]) if _is_train(cfg, split) else (d["x_test"], d["y_test"])
  return grain.MapDataset.source(ArrayExamples(x[..., None], y))


def digits_source(cfg, *, split: str, seed: int) -> grain.MapDataset:
  """sklearn's bundled 8x8 digits (1797 images); a fixed 80/20 split by a seeded permutation."""
  del seed
  d = registry.toy_dataset_module("sklearn.datasets", "digits").load_digits()
  order = np.random.default_rng(0).permutation(len(d.target))
  cut = int(0.8 * len(order))
  idx = order[:cut] if _is_train(cfg, split) else order[cut:]
  x = (d.images[idx] / 16.0 - 0.5) / 0.5
  return grain.MapDataset.source(ArrayExamples(x[..., None], d.target[idx]))


_MEAN_STD = {  # per-channel statistics of the training sets, in [0, 1] pixel units
  "mnist": ((0.1307,), (0.3081,)),
  "fashion_mnist": ((0.2860,), (0.3530,)),
  "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
  "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def tfds_source(cfg, *, split: str, seed: int) -> grain.MapDataset:
  """A TFDS image dataset by name (prepared as ArrayRecord under data_dir), standardised.

  data.image_size = S > 0 brings images of any size to S x S: the shorter side resized to S / 0.875
  and the centre S x S kept, except for training with data.augment.random_resized_crop, which crops
  from the full image (ImageNet's recipe). 0 keeps the stored size (CIFAR, MNIST).
  """
  del seed
  name = cfg.tfds_name
  ds = grain.MapDataset.source(load_data_source(name, split, cfg.data_dir or default_data_dir()))
  mean, std = (np.asarray(v, np.float32) for v in _MEAN_STD.get(name.split(":")[0], _IMAGENET))
  size = int(cfg.get("image_size", 0))
  # training with a random-resized crop (validate.py checks it targets image_size) crops the full image
  resized_crop = _is_train(cfg, split) and cfg.get("augment") and cfg.augment.get("random_resized_crop", 0)

  def to_example(record) -> dict[str, np.ndarray]:
    image = (np.asarray(record["image"], np.float32) / 255.0 - mean) / std
    if size and not resized_crop:
      image = resize_center_crop(image, size)
    return {"inputs": image, "targets": np.int32(record["label"]), "weights": np.float32(1.0)}

  return ds.map(to_example)

