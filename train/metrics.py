"""Where a run's numbers go: metrics.jsonl (source of truth), TensorBoard events, console.

Only process 0 writes. On resume, records past the restored step are dropped from
metrics.jsonl so the file reads as one uninterrupted run. A torn last line (a writer killed
mid-append) is skipped by readers and dropped on resume; a bad line anywhere else is an error.
"""

import json
import math
import os

import numpy as np


def scalar(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


class MetricWriter:
  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled and tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drop records with step > `step` (left by a run that was killed after its last checkpoint) and a
    torn last line."""
    if not (self.enabled and os.path.exists(self.path)):
      return
    keep = [json.dumps(r) + "\n" for r in _parse(self.path) if r.get("step", 0) <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: scalar(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, int | float) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
        elif isinstance(v, list) and v and all(isinstance(x, int | float) for x in v):
          for i, x in enumerate(v):
            self._tb.add_scalar(f"{k}/{i}", x, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _parse(path: str) -> list[dict]:
  """The records of a metrics.jsonl file; a last line that is not JSON (torn by a kill) is skipped."""
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        break
      raise ValueError(f"{path} line {i + 1} is not JSON ({e}); only a torn last line is skipped") from None
  return records


def read(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  return _parse(path) if os.path.exists(path) else []
