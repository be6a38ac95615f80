"""The loop's hook interface (train/hooks.py): which point is called when, a forced log, a replaced program."""

from typing import ClassVar

import numpy as np

from tests.foundation_configs import tiny_lm
from train import hooks, loop, metrics


class Recorder(hooks.Hook):
  """Logs every call; forces a log at step 2 and rebuilds the program after it (same shapes)."""

  calls: ClassVar[list] = []

  def config_at(self, config, step):
    Recorder.calls.append(("config_at", step))
    return config

  def check(self, program):
    Recorder.calls.append(("check",))

  def after_update(self, step, program, state, batch):
    Recorder.calls.append(("after_update", step, int(state["step"])))
    return state

  def log_now(self, step):
    return step == 2

  def after_log(self, step, program, state, batch):
    Recorder.calls.append(("after_log", step))
    return (self.build(self.config, program.mesh), state) if step == 2 else (program, state)

  def record(self, config):
    return {"recorded": 1.0}


def test_the_loop_calls_each_hook_point_in_order(tmp_path, monkeypatch):
  monkeypatch.setattr(hooks, "HOOKS", {"recorder": "tests.test_hooks:Recorder"})
  Recorder.calls = []
  c = tiny_lm(steps=4)
  c.train.update(dict(log_every=10, eval_every=10, ckpt_every=10, tensorboard=False))
  summary = loop.run(c, str(tmp_path))
  records = metrics.read(tmp_path)
  assert summary["steps"] == 4 and np.isfinite(summary["loss"])
  assert [r["step"] for r in records] == [2, 4]  # forced at 2, the last step
  assert all(r["recorded"] == 1.0 for r in records)
  assert "eval_loss" in records[0]  # a forced log evaluates too
  steps = [c for c in Recorder.calls if c[0] in ("after_update", "after_log")]
  assert steps == [("after_update", 1, 1), ("after_log", 1), ("after_update", 2, 2), ("after_log", 2),
                   ("after_update", 3, 3), ("after_log", 3), ("after_update", 4, 4), ("after_log", 4)]
  assert Recorder.calls.count(("check",)) == 2  # the first program and the one after_log built
  assert ("config_at", 0) in Recorder.calls
