"""Cooldown branches (train/cooldowns.py): a branch of a WSD run equals a run sized to its end."""

import pytest

from tests.foundation_configs import tiny_lm
from train import cooldowns, loop, metrics
from train.config import ConfigError


def test_cooldown_branch_equals_a_run_sized_to_its_end(tmp_path):
  c = tiny_lm("mqar", steps=12)
  c.optim.update(dict(schedule="wsd", decay_steps=4, min_lr_ratio=0.0))
  c.train.update(dict(ckpt_every=2, keep_ckpts=10, eval_every=100, tensorboard=False))  # eval at the end only
  loop.run(c, str(tmp_path / "long"))
  branch = cooldowns.branch(str(tmp_path / "long"), 6, 3, shape="1-sqrt")
  sized = c.copy_and_resolve_references()
  sized.optim.update(dict(decay_steps=3, decay_shape="1-sqrt"))
  sized.train.steps = 9
  ref = loop.run(sized, str(tmp_path / "sized"))
  assert branch["steps"] == ref["steps"] == 9
  assert branch["loss"] == pytest.approx(ref["loss"], rel=1e-5)
  assert branch["eval_loss"] == pytest.approx(ref["eval_loss"], rel=1e-5)
  got, want = metrics.read(branch["workdir"]), metrics.read(ref["workdir"])
  assert [r["step"] for r in got] == list(range(1, 10))  # the long run's history up to 6, then the branch
  assert [r["lr"] for r in got] == pytest.approx([r["lr"] for r in want], rel=1e-6)
  peak = pytest.approx(c.optim.lr, rel=1e-6)
  assert got[5]["lr"] == got[6]["lr"] == peak and got[8]["lr"] == pytest.approx(c.optim.lr * (1 - (2 / 3) ** 0.5))
  long = metrics.read(tmp_path / "long")
  assert long[8]["loss"] != pytest.approx(branch["loss"], rel=1e-3)  # the long run at step 9 is another point

  with pytest.raises(ConfigError, match="no checkpoint at step 5"):
    cooldowns.branch(str(tmp_path / "long"), 5, 2)
  with pytest.raises(ConfigError, match="not its constant peak"):
    cooldowns.branch(str(tmp_path / "long"), 10, 2)
  c.optim.schedule = "cosine"
  with pytest.raises(ConfigError, match="need a constant-lr run"):
    cooldowns.branch_config(c, 6, 2)


def test_wsd_decay_steps_and_shapes():
  from experiments import common
  from train import optim, validate

  c = common.base_config()
  c.optim.update(dict(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="wsd", decay_steps=20, decay_shape="1-sqrt"))
  lr = optim.schedule(c.optim, 110)
  assert float(lr(89)) == pytest.approx(1.0) and float(lr(90)) == pytest.approx(1.0)
  assert float(lr(95)) == pytest.approx(0.1 + 0.9 * (1 - 0.5)) and float(lr(110)) == pytest.approx(0.1)
  c.optim.decay_shape = "linear"
  assert float(optim.schedule(c.optim, 110)(95)) == pytest.approx(1.0 - 0.9 * 0.25)
  c.optim.decay_shape = "cosine"
  with pytest.raises(ConfigError, match=r"optim\.decay_shape='cosine'; choose one of"):
    validate.validate(c, num_devices=1, process_count=1)
