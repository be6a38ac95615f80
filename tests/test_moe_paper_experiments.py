"""experiments/smoe_dropout.py, finedeep.py, mohd.py: every variant validates and builds at local and paper
scale with the parameter relations its comparison rests on; the sweeps expand to the promised runs."""

import pytest
from flax import nnx

import models
from experiments import finedeep, mohd, smoe_dropout
from layers.forward_flops import active_params
from train import sweep
from train.validate import validate


def _build(module, arg):
  config = module.get_config(arg)
  config.lock()
  validate(config, num_devices=1, process_count=1)
  model = nnx.eval_shape(lambda: models.build(config.model, rngs=nnx.Rngs(0)))
  total = sum(v.size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
  return config, total, active_params(model)


@pytest.mark.parametrize("scale", ["local", ""])
def test_smoe_dropout_variants(scale):
  sep = "," if scale else ""
  built = {v: _build(smoe_dropout, f"{scale}{sep}variant={v}") for v in smoe_dropout.VARIANTS}
  dense, sd, learned = (built[v] for v in ("dense", "smoe_dropout", "learned"))
  assert sd[1] == pytest.approx(dense[1], rel=0.01)  # the dense ffn split into experts (plus per-expert biases)
  assert sd[0].model.options.ffn.ramp_steps == sd[0].train.steps  # k reaches all experts at the end of the run
  assert learned[1] == pytest.approx(dense[1], rel=0.03)  # the same experts, plus a learned router
  model = nnx.eval_shape(lambda: models.build(learned[0].model, rngs=nnx.Rngs(0)))
  n = learned[0].model.options.ffn.n_experts
  for block in model.blocks:  # the router, and top-2 of the n experts
    experts = sum(v.size for _, v in nnx.to_flat_state(nnx.state(block.ffn.experts, nnx.Param)))
    assert active_params(block.ffn) == pytest.approx(block.ffn.router.kernel.size + 2 / n * experts)
  assert dense[0].train.eval_top_k == () and sd[0].train.eval_top_k[-1] == sd[0].model.options.ffn.n_experts


@pytest.mark.parametrize("scale, variants", [("local", ("m2k4", "m4k2")), ("size=1.3b", ("m4k8",))])
def test_finedeep_variants_match_dense_parameters(scale, variants):
  _, dense, _ = _build(finedeep, f"{scale},variant=dense")
  for variant in variants:
    _, total, active = _build(finedeep, f"{scale},variant={variant}")
    assert total == pytest.approx(dense, rel=0.015) and active == total


@pytest.mark.parametrize("scale", ["local", "size=340m"])
def test_mohd_compression_halves_the_active_ffn(scale):
  built = {v: _build(mohd, f"{scale},variant={v}") for v in mohd.VARIANTS}
  assert built["mohd"][1] == pytest.approx(built["dense"][1], rel=0.05)  # same weights ...
  assert built["mohd"][2] == pytest.approx(built["dense_half"][2], rel=0.05)  # ... half of the ffn's active


@pytest.mark.parametrize("module, n_runs", [(smoe_dropout, 6), (finedeep, 6), (mohd, 6)])
def test_local_sweeps_run_every_variant_over_two_seeds(module, n_runs, tmp_path):
  name = module.__name__.split(".")[-1]
  runs = sweep.expand(f"experiments/{name}.py:local", str(tmp_path))
  assert len(runs) == n_runs and sorted({r.overrides["seed"] for r in runs}) == [0, 1]
