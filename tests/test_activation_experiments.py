"""experiments/activation_zoo.py and experiments/inr.py: every variant's config validates; the INR data."""

import math

import numpy as np
import pytest

from experiments import activation_zoo, inr
from train import validate
from train.data import inr as inr_data


@pytest.mark.parametrize("task", ["mnist1d", "text"])
def test_zoo_configs_validate(task):
  for act in activation_zoo.activations():
    config = activation_zoo.get_config(f"task={task},act={act},local")
    config.data.batch_size = 104  # the tests' 8 fake devices shard the batch; the experiment runs on one
    validate.validate(config)


def test_inr_configs_validate():
  for task in ("image", "periodic"):
    for model in inr.MODELS:
      validate.validate(inr.get_config(f"task={task},model={model},local"))


def test_inr_data():
  coords, rgb = inr_data.image_arrays("china.jpg", 16)
  assert coords.shape == (256, 2) and rgb.shape == (256, 3)
  assert coords.min() > -1 and coords.max() < 1 and rgb.min() >= -1 and rgb.max() <= 1 and rgb.std() > 0.1
  x, y = inr_data.periodic_arrays(100, 2 * math.pi, 6 * math.pi, 1)
  assert x.min() >= 2 * math.pi and x.max() <= 6 * math.pi
  np.testing.assert_allclose(y, inr_data.periodic_target(x.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_zoo_text_sweep_hands_each_activation_its_options():
  """The LM reads options per block name, so the text sweep must put an activation's options on the `mlp`
  feed-forward (a run of generalized_smelu with the defaults would be plain SmeLU)."""
  from flax import nnx

  import models
  from train import sweep

  spec = "experiments/activation_zoo.py:task=text,local"
  runs = {r.overrides["model.activation"]: r for r in sweep.expand(spec, root="/nonexistent")
          if r.overrides["seed"] == 0}
  seen = {}
  for act in activation_zoo.OPTIONS:
    config = sweep.resolve(spec, runs[act].overrides)
    model = nnx.eval_shape(lambda c=config: models.build(c.model, rngs=nnx.Rngs(0)))
    acts = [m for _, m in nnx.iter_modules(model) if type(m).__name__ in ("GeneralizedSmeLU", "VeLU")]
    assert acts, act
    seen[act] = acts[0]
  assert seen["generalized_smelu"].slope_left == 0.05 and seen["generalized_smelu"].offset == -0.05
  assert seen["velu"].options["alpha"] == 2.0
  assert activation_zoo.get_config("task=text,act=velu,local").model.options.mlp.activation_options.beta2 == 0.7


def test_zoo_table_counts_finished_runs_only(tmp_path):
  """A run still going (its last eval before train.steps) stays out of the table; finished ones give mean ± std."""
  import json

  for name, act, evals in (("a", "relu", {100: 3.0, 300: 2.5}), ("b", "relu", {100: 3.1, 300: 2.7}),
                           ("c", "gelu", {100: 2.0})):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps({"model": {"activation": act}, "train": {"steps": 300}}))
    (tmp_path / name / "metrics.jsonl").write_text(
      "".join(json.dumps({"step": step, "eval_loss": loss}) + "\n" for step, loss in evals.items()))
  rows = activation_zoo.table(str(tmp_path), "text").splitlines()[2:]
  assert rows == ["| relu | 2.6000 ± 0.1414 | 2 |"]
