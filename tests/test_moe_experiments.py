"""experiments/moe.py: every variant validates and builds at local and paper scale with the active parameters
of the dense ffn; both studies expand to the runs they promise; the study table reads metrics back."""

import numpy as np
import pytest
from flax import nnx

import models
from experiments import moe
from layers.forward_flops import active_params
from train import sweep
from train.validate import validate


def _ffn_active_params(config) -> float:
  model = nnx.eval_shape(lambda: models.build(config.model, rngs=nnx.Rngs(0)))
  return sum(active_params(block.ffn) for block in model.blocks)


@pytest.mark.parametrize("scale", ["local", "size=125m"])
def test_variants_validate_and_match_dense_active_parameters(scale, spm_model):
  dense = _ffn_active_params(moe.get_config(f"{scale},variant=dense"))
  for variant in set(moe.VARIANTS) - {"dense", "smear"}:  # SMEAR merges all experts: not a sparse layer
    config = moe.get_config(f"{scale},variant={variant}")
    if scale != "local":  # paper scale reads C4 through a SentencePiece model
      config.data.spm_model = spm_model
    config.lock()
    validate(config, num_devices=1, process_count=1)
    assert _ffn_active_params(config) == pytest.approx(dense, rel=0.05), variant


def test_deepseek_v3_variants_differ_only_in_balancing():
  options = {v: moe.ffn_options(v, 192, local=True) for v in ("deepseek_v3", "deepseek_v3_aux_loss")}
  free, aux = options["deepseek_v3"], options["deepseek_v3_aux_loss"]
  assert free["bias_update_rate"] > 0 and free["load_balance_weight"] == 0
  assert aux["bias_update_rate"] == 0 and aux["load_balance_weight"] > 0
  assert {k for k in free if free[k] != aux[k]} == {"bias_update_rate", "seq_balance_weight", "load_balance_weight"}


def test_studies_run_their_variants_over_two_seeds_locally(tmp_path):
  runs = sweep.expand("experiments/moe.py:study=balance,local", str(tmp_path))
  assert len(runs) == 4 and sorted(r.overrides["seed"] for r in runs) == [0, 0, 1, 1]
  assert len(sweep.expand("experiments/moe.py:local", str(tmp_path))) == 2 * len(moe.VARIANTS)


def test_study_table_reads_metrics():
  records = [{"step": s, "layers/moe_max_violation": v, **({"eval_loss": 2.0 + s / 100} if s % 30 == 0 else {})}
             for s, v in zip(range(10, 100, 10), [3, 3, 3, 2, 2, 2, 1, 1, 1])]
  summary = moe.run_summary(records)
  assert summary == {"eval_loss": 2.9, "max_violation": 2.0, "max_violation_late": 1.0}
  rows = [{"variant": "a", **summary}, {"variant": "a", **{**summary, "eval_loss": 3.1}}]
  assert "a | 2 | 3.000 ± 0.100 | 2.000 ± 0.000 | 1.000 ± 0.000" in moe.table(rows)
  assert np.isclose(moe.run_summary([{"step": 1, "eval_loss": 1.0}])["eval_loss"], 1.0)
