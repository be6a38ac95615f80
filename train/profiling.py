"""A jax.profiler trace of chosen training steps, written into the run's workdir.

`train.profile_steps = (first, last)` traces steps first..last (numbered as in metrics.jsonl) into
<workdir>/profile/plugins/profile/<time>/<host>.xplane.pb (and .trace.json.gz): open it with
TensorBoard's profile plugin (xprof) or Perfetto. Each host writes its own.
"""

from collections.abc import Sequence

import jax
from etils import epath


class StepTrace:
  """Starts the trace before step `first` runs and stops it once step `last` has finished."""

  def __init__(self, steps: Sequence[int], workdir: str):
    self.first, self.last = tuple(steps) if steps else (0, -1)
    self.directory = str(epath.Path(workdir) / "profile")
    self.active = False

  def before(self, step: int) -> None:
    """Called before step `step` (1-based) is dispatched."""
    if not self.active and self.first <= step <= self.last:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, state) -> None:
    """Called after step `step` was dispatched; `state` is its output, waited for before the trace stops."""
    if self.active and step >= self.last:
      jax.block_until_ready(state)
      self.close()

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
