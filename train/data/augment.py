"""Training-time image augmentations: random crop (zero-padded) and horizontal flip per example,
mixup / cutmix per batch (soft targets). Seeded through grain, so a resumed run sees the same
augmented batches. Label smoothing lives in the loss (`train.label_smoothing`).

Config (`data.augment`): crop_padding (pixels, 0 = off), flip (bool), mixup_alpha, cutmix_alpha
(0 = off; with both set, each batch uses one of them at random), num_classes (for soft targets).
"""

import numpy as np


def crop_flip(example: dict, rng: np.random.Generator, *, padding: int, flip: bool) -> dict:
  """inputs [H, W, C]: pad by `padding` and crop back at a random offset; flip left-right w.p. 1/2."""
  x = example["inputs"]
  if padding:
    h, w = x.shape[:2]
    padded = np.pad(x, ((padding, padding), (padding, padding), (0, 0)))
    i, j = rng.integers(0, 2 * padding + 1, size=2)
    x = padded[i:i + h, j:j + w]
  if flip and rng.random() < 0.5:
    x = x[:, ::-1]
  return {**example, "inputs": np.ascontiguousarray(x)}


def mix_batch(batch: dict, rng: np.random.Generator, *, mixup_alpha: float, cutmix_alpha: float,
              num_classes: int) -> dict:
  """Blend each example with a partner from the same batch; targets become soft [B, num_classes]."""
  x, y = batch["inputs"], batch["targets"]
  soft = np.eye(num_classes, dtype=np.float32)[y] if y.ndim == 1 else y
  perm = rng.permutation(len(x))
  use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
  lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
  if use_cutmix:  # paste a box of area (1 - lam) from the partner; lam is then the exact kept fraction
    h, w = x.shape[1:3]
    bh, bw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    cy, cx = rng.integers(0, h), rng.integers(0, w)
    y0, y1 = np.clip([cy - bh // 2, cy + bh // 2], 0, h)
    x0, x1 = np.clip([cx - bw // 2, cx + bw // 2], 0, w)
    mixed = x.copy()
    mixed[:, y0:y1, x0:x1] = x[perm, y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
  else:
    mixed = lam * x + (1 - lam) * x[perm]
  return {**batch, "inputs": mixed.astype(x.dtype), "targets": (lam * soft + (1 - lam) * soft[perm]).astype(np.float32)}


def example_transform(cfg):
  """(example, rng) -> example for grain's random_map, or None when nothing is configured."""
  if not cfg or not (cfg.get("crop_padding", 0) or cfg.get("flip", False)):
    return None
  padding, flip = int(cfg.get("crop_padding", 0)), bool(cfg.get("flip", False))
  return lambda ex, rng: crop_flip(ex, rng, padding=padding, flip=flip)


def batch_transform(cfg):
  """(batch, rng) -> batch for grain's random_map, or None when nothing is configured."""
  if not cfg or not (cfg.get("mixup_alpha", 0.0) > 0 or cfg.get("cutmix_alpha", 0.0) > 0):
    return None
  if cfg.get("num_classes", 0) <= 0:
    raise ValueError("data.augment.num_classes must be set (> 0) for mixup / cutmix soft targets")
  kw = dict(mixup_alpha=float(cfg.get("mixup_alpha", 0.0)), cutmix_alpha=float(cfg.get("cutmix_alpha", 0.0)),
            num_classes=int(cfg.num_classes))
  return lambda b, rng: mix_batch(b, rng, **kw)
