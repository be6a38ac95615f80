"""Where a run's numbers go: metrics.jsonl (source of truth), TensorBoard events, console.

Only process 0 writes. On resume, records past the restored step are dropped from
metrics.jsonl so the file reads as one uninterrupted run. A torn last line (a writer killed
mid-append) is skipped by readers and dropped on resume; a bad line anywhere else is an error.
A local metrics.jsonl grows by appends; a remote one (gs://, whose objects cannot grow) is
rewritten by `flush`, which the loop calls with every checkpoint and at the end, and which
`write` calls when the last flush is older than FLUSH_SECONDS. TensorBoard events of a remote
workdir are written to a local temporary directory and copied to DIR/tensorboard by `flush`.
"""

import json
import math
import os
import pathlib
import shutil
import tempfile
import time

import numpy as np

from train import paths

FLUSH_SECONDS = 60.0


def scalar(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


class MetricWriter:
  def __init__(self, workdir, *, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = paths.path(workdir) / "metrics.jsonl"
    self._remote = paths.is_remote(self.path)
    self._lines: list[str] = []  # a remote file's content, rewritten by flush()
    self._flushed = time.monotonic()
    self._tb, self._tb_dir = None, paths.path(workdir) / "tensorboard"
    self._tb_local = tempfile.mkdtemp(prefix="ablax-tensorboard-") if self._remote else os.fspath(self._tb_dir)
    if enabled and tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(self._tb_local)

  def truncate_after(self, step: int) -> None:
    """Drop records with step > `step` (left by a run that was killed after its last checkpoint) and a
    torn last line."""
    if not self.enabled:
      return
    records = _parse(self.path) if self.path.exists() else []
    self._lines = [json.dumps(r) + "\n" for r in records if r.get("step", 0) <= step]
    if self.path.exists():
      paths.write_atomic(self.path, "".join(self._lines))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: scalar(v) for k, v in metrics.items()}}
    line = json.dumps(record) + "\n"
    if self._remote:
      self._lines.append(line)
    else:
      with self.path.open("a") as f:
        f.write(line)
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, int | float) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
        elif isinstance(v, list) and v and all(isinstance(x, int | float) for x in v):
          for i, x in enumerate(v):
            self._tb.add_scalar(f"{k}/{i}", x, step)
    if not self._remote or time.monotonic() - self._flushed > FLUSH_SECONDS:
      self.flush()

  def flush(self) -> None:
    """Make every record written so far visible in the workdir."""
    if not self.enabled:
      return
    if self._remote:
      paths.write_atomic(self.path, "".join(self._lines))
    if self._tb is not None:
      self._tb.flush()
      self._copy_events()
    self._flushed = time.monotonic()

  def _copy_events(self) -> None:
    if self._remote:
      self._tb_dir.mkdir(parents=True, exist_ok=True)
      for name in os.listdir(self._tb_local):
        (self._tb_dir / name).write_bytes(pathlib.Path(self._tb_local, name).read_bytes())

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()
      self._copy_events()
    if self._remote:
      shutil.rmtree(self._tb_local, ignore_errors=True)


def _parse(path) -> list[dict]:
  """The records of a metrics.jsonl file; a last line that is not JSON (torn by a kill) is skipped."""
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        break
      raise ValueError(f"{path} line {i + 1} is not JSON ({e}); only a torn last line is skipped") from None
  return records


def read(workdir) -> list[dict]:
  path = paths.path(workdir) / "metrics.jsonl"
  return _parse(path) if path.exists() else []
