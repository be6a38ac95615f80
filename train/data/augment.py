"""Training-time image augmentations: random-resized crop, random crop (zero-padded), horizontal
flip and random erasing per example, mixup / cutmix per batch (soft targets). Seeded through grain,
so a resumed run sees the same augmented batches. Label smoothing lives in the loss
(`train.label_smoothing`).

Config (`data.augment`): random_resized_crop (output side in pixels, 0 = off: Inception / DeiT crop
of 8-100% of the area at aspect 3/4..4/3, resized), crop_padding (pixels, 0 = off), flip (bool),
erase_prob (random erasing as DeiT / timm: with this probability one box of 2-33% of the area, aspect
0.3..3.3, is filled with N(0, 1) noise in the standardised image; 0 = off), mixup_alpha, cutmix_alpha
(0 = off; with both set, each batch uses one of them at random), num_classes (for soft targets).
"""

import math

import numpy as np
from PIL import Image

RRC_SCALE = (0.08, 1.0)  # area fraction of the crop
RRC_RATIO = (3 / 4, 4 / 3)  # aspect ratio w / h, sampled log-uniformly
ERASE_SCALE = (0.02, 1 / 3)  # random erasing: area fraction of the box
ERASE_RATIO = (0.3, 1 / 0.3)  # and its aspect ratio, sampled log-uniformly


def resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear (antialiased when shrinking) resize of x [H, W, C] float32 to [height, width, C]."""
  channels = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c], np.float32), mode="F")
                         .resize((width, height), Image.Resampling.BILINEAR)) for c in range(x.shape[-1])]
  return np.stack(channels, axis=-1)


def resize_center_crop(x: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """Evaluation view: shorter side resized to size / crop_fraction (256 for 224), centre size x size."""
  h, w = x.shape[:2]
  short = round(size / crop_fraction)
  x = resize(x, max(short, round(h * short / w)), max(short, round(w * short / h)))
  i, j = (x.shape[0] - size) // 2, (x.shape[1] - size) // 2
  return x[i:i + size, j:j + size]


def random_resized_crop(x: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """Inception-style crop of x [H, W, C]: area RRC_SCALE, aspect RRC_RATIO (10 tries, then the
  largest centred crop within the ratio range), resized to [size, size, C]."""
  h, w = x.shape[:2]
  log_ratio = np.log(RRC_RATIO)
  for _ in range(10):
    area = h * w * rng.uniform(*RRC_SCALE)
    ratio = math.exp(rng.uniform(*log_ratio))
    cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
    if 0 < cw <= w and 0 < ch <= h:
      i, j = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      return resize(x[i:i + ch, j:j + cw], size, size)
  ratio = np.clip(w / h, *RRC_RATIO)
  cw, ch = (w, round(w / ratio)) if w / h <= ratio else (round(h * ratio), h)
  i, j = (h - ch) // 2, (w - cw) // 2
  return resize(x[i:i + ch, j:j + cw], size, size)


def random_erase(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """x [H, W, C] with one random box (ERASE_SCALE of the area, ERASE_RATIO aspect; 10 tries) replaced
  by standard-normal noise; unchanged if no box fits."""
  h, w = x.shape[:2]
  for _ in range(10):
    area = h * w * rng.uniform(*ERASE_SCALE)
    ratio = math.exp(rng.uniform(*np.log(ERASE_RATIO)))
    eh, ew = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
    if 0 < eh < h and 0 < ew < w:
      i, j = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
      x = x.copy()
      x[i:i + eh, j:j + ew] = rng.standard_normal((eh, ew, x.shape[2])).astype(x.dtype)
      return x
  return x


def augment_example(example: dict, rng: np.random.Generator, *, padding: int, flip: bool, resized_crop: int = 0,
                    erase_prob: float = 0.0) -> dict:
  """inputs [H, W, C]: random-resized crop to resized_crop x resized_crop (if > 0); pad by `padding`
  and crop back at a random offset; flip left-right w.p. 1/2; random erasing w.p. erase_prob."""
  x = example["inputs"]
  if resized_crop:
    x = random_resized_crop(x, rng, resized_crop)
  if padding:
    h, w = x.shape[:2]
    padded = np.pad(x, ((padding, padding), (padding, padding), (0, 0)))
    i, j = rng.integers(0, 2 * padding + 1, size=2)
    x = padded[i:i + h, j:j + w]
  if flip and rng.random() < 0.5:
    x = x[:, ::-1]
  if erase_prob and rng.random() < erase_prob:
    x = random_erase(x, rng)
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
  cfg = cfg or {}
  kw = dict(resized_crop=int(cfg.get("random_resized_crop", 0)), padding=int(cfg.get("crop_padding", 0)),
            flip=bool(cfg.get("flip", False)), erase_prob=float(cfg.get("erase_prob", 0.0)))
  if not any(kw.values()):
    return None
  return lambda ex, rng: augment_example(ex, rng, **kw)


def batch_transform(cfg):
  """(batch, rng) -> batch for grain's random_map, or None when nothing is configured."""
  if not cfg or not (cfg.get("mixup_alpha", 0.0) > 0 or cfg.get("cutmix_alpha", 0.0) > 0):
    return None
  if cfg.get("num_classes", 0) <= 0:
    raise ValueError("data.augment.num_classes must be set (> 0) for mixup / cutmix soft targets")
  kw = dict(mixup_alpha=float(cfg.get("mixup_alpha", 0.0)), cutmix_alpha=float(cfg.get("cutmix_alpha", 0.0)),
            num_classes=int(cfg.num_classes))
  return lambda b, rng: mix_batch(b, rng, **kw)
