"""Results with their noise: the eval set's standard error and input-blind baseline, smoothed train loss,
mean ± std over seeds in the report table."""

import json
import math

import jax
import numpy as np
import pytest

from tests.foundation_configs import tiny_lm
from train import baselines, report
from train import mesh as mesh_lib
from train.data.mqar import MQAR
from train.loop import evaluate


def test_unigram_baseline_of_mqar_is_chance():
  ds = MQAR(vocab_size=32, num_pairs=4, num_queries=0, seq_len=32, num_examples=2000, seed=0, split="validation")
  b = baselines.unigram({k: v[None] for k, v in ds[i].items()} for i in range(2000))
  assert b["eval_unigram_loss"] == pytest.approx(math.log(16), abs=0.01)  # 16 value tokens, uniform
  assert 1 / 16 <= b["eval_unigram_accuracy"] < 1.3 / 16
  assert baselines.unigram([{"targets": np.zeros((2, 3), np.float32), "weights": np.ones((2, 3))}]) == {}


def test_evaluate_reports_standard_errors():
  per = np.array([0.5, 2.0, 1.0, 3.5, 0.0, 1.5])  # per-position losses, 3 per batch; first two of each correct
  batches = [per[:3], per[3:]]

  class Batches:
    i = 0

    def get_state(self):
      return {"i": self.i}

    def set_state(self, state):
      self.i = state["i"]

    def __next__(self):
      self.i += 1
      return {"inputs": np.full((1, 1), self.i - 1, np.int32)}

  def eval_fn(state, batch):
    x = batches[int(batch["inputs"][0, 0])]
    return {"loss": x.sum(), "loss_sq": (x ** 2).sum(), "weight": 3.0, "correct": 2.0}

  cfg = tiny_lm()
  cfg.train.eval_steps = 2
  sharding = jax.sharding.NamedSharding(mesh_lib.make_mesh(cfg.mesh.shape, devices=jax.devices()[:1]),
                                        jax.sharding.PartitionSpec())
  it = Batches()
  out = evaluate(eval_fn, None, cfg, it, it.get_state(), sharding)
  assert out["eval_loss"] == pytest.approx(per.mean())
  assert out["eval_loss_se"] == pytest.approx(per.std() / math.sqrt(6))
  assert out["eval_accuracy_se"] == pytest.approx(math.sqrt((2 / 3) * (1 / 3) / 6))


def _run(root, name, seed, losses, eval_loss, se, steps=None):
  d = root / name
  d.mkdir(parents=True)
  (d / "config.json").write_text(json.dumps({"model": {"blocks": "(gla, swiglu) * 2"}, "seed": seed,
                                             "train": {"steps": steps or len(losses)}}))
  with open(d / "metrics.jsonl", "w") as f:
    for step, loss in enumerate(losses, 1):
      rec = {"step": step, "loss": loss, "flops_per_step": 1e9, "params": 1000}
      if step == len(losses):
        rec.update(eval_loss=eval_loss, eval_loss_se=se, eval_unigram_loss=5.25, eval_unigram_accuracy=0.0625)
      f.write(json.dumps(rec) + "\n")


def test_report_table_smooths_train_loss_and_shows_seed_spread_and_eval_error(tmp_path):
  # 20 logged steps: the reported train loss is the mean of the last 5 (10%, at least 5), not the last batch.
  _run(tmp_path, "seed-0", 0, [9.0] * 15 + [3.0, 3.0, 3.0, 2.0, 4.0], 2.5, 0.01)
  _run(tmp_path, "seed-1", 1, [9.0] * 15 + [3.0, 3.0, 3.0, 1.4, 1.6], 2.7, 0.03)
  result = report.report(str(tmp_path))
  assert [r["loss"] for r in result["rows"]] == pytest.approx([3.0, 2.4])
  row = result["markdown"].splitlines()[2]
  assert "| 2 |" in row  # two seeds in one group
  assert f"2.6 ± {np.std([2.5, 2.7], ddof=1):.2g}" in row and f"{2.7:.4g} ± " in row  # train loss, eval loss
  assert "| 0.02 / - |" in row  # mean eval standard error of the loss; no accuracy
  assert result["baselines"] == ["eval set's input-blind baseline (unigram / chance): loss 5.25, accuracy 0.0625"]
  assert any(p.endswith("seed_spread.png") for p in result["plots"])


def test_report_table_marks_unfinished_runs(tmp_path):
  _run(tmp_path, "seed-0", 0, [3.0] * 40, 2.5, 0.01)
  _run(tmp_path, "seed-1", 1, [3.0] * 20, 2.7, 0.03, steps=40)  # stopped at step 20 of 40: mid-run numbers
  result = report.report(str(tmp_path))
  assert [r["finished"] for r in result["rows"]] == [True, False]
  assert "| 2 (1 unfinished) |" in result["markdown"].splitlines()[2]


def test_ema_is_debiased_and_follows_a_step():
  assert report.ema([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
  out = report.ema([0.0] * 5 + [1.0] * 60)
  assert out[4] == 0.0 and 0.1 < out[5] < 0.3 and out[-1] == pytest.approx(1.0, abs=1e-4)
