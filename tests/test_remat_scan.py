"""model.remat policies and model.scan_layers change how a step computes, never what: outputs, aux
losses and gradients equal the plain model's; a scanned model starts from the same parameters, decodes
the same tokens, counts the same FLOPs, and its traced step does not grow with depth."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from layers.aux import AuxLoss, LayerMetric
from layers.forward_flops import active_params, forward_flops_per_token
from models.block_pattern import parse_groups
from models.lm import generate
from tests.foundation_configs import tiny_lm
from train import memory
from train import mesh as mesh_lib
from train.config import ConfigError
from train.step import task_sums
from train.validate import validate

# Repeated groups of one and of two blocks, a single block, an aux loss (KAN regulariser) and metrics (SMEAR)
# sown inside the scan; mixers cheap to compile (the mixers' own scans are covered by tests/test_mixers.py).
BLOCKS = "(attention, swiglu) * 2 + ((retnet, smear) + (swa, kan_reg)) * 2"


def _config(remat="none", scan=False, blocks=BLOCKS):
  c = tiny_lm()
  c.model.update(dict(blocks=blocks, remat=remat, scan_layers=scan))
  c.model.options.kan_reg = dict(layer="kan", hidden=16, reg_weight=0.1)
  return c


def _unstacked(params: dict, blocks: str) -> dict:
  """A scanned model's parameters under the plain model's paths (blocks/<layer>/...)."""
  flat = {}
  for path, value in nnx.to_flat_state(nnx.State(params)):
    flat[tuple(path)] = value.get_value() if hasattr(value, "get_value") else value
  out, first = {}, {}
  layer = 0
  for g, (group, count) in enumerate(parse_groups(blocks)):
    first[g] = layer
    layer += count * len(group)
  for path, value in flat.items():
    if path[0] != "blocks":
      out[path] = value
      continue
    g, j = path[1], int(re.fullmatch(r"layer(\d+)", path[3]).group(1))
    size = len(parse_groups(blocks)[g][0])
    for r in range(value.shape[0]):
      out[("blocks", first[g] + r * size + j, *path[4:])] = value[r]
  return out


def _flat(params: dict) -> dict:
  return {tuple(p): v.get_value() if hasattr(v, "get_value") else v for p, v in nnx.to_flat_state(nnx.State(params))}


@functools.cache
def _run(remat: str, scan: bool):
  """(logits, aux losses, gradients of loss + aux, initial params) of the model on one packed batch."""
  c = _config(remat, scan)
  model = models.build(c.model, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rest = nnx.to_pure_dict(rest)
  tokens = jax.random.randint(jax.random.key(1), (4, 24), 0, c.model.vocab_size)
  segment_ids = jnp.repeat(jnp.arange(2)[None], 4, 0).repeat(12, axis=1)  # two documents per row

  @jax.jit
  def loss_and_grads(params):
    def loss(params):
      model = nnx.merge(graphdef, params, rest)
      logits, sown, metrics = nnx.capture(model, AuxLoss, LayerMetric)(tokens, segment_ids=segment_ids)
      aux = {}  # per name over the layers: aux losses summed, metrics averaged, as the training step does
      for suffix, captured, reduce in (("", sown, jnp.sum), ("_metric", metrics, jnp.mean)):
        values = {}
        for p, v in nnx.to_flat_state(captured):
          values.setdefault(str(p[-1]) + suffix, []).extend(v.get_value())
        aux |= {k: reduce(jnp.stack(v), axis=0) for k, v in values.items()}
      sums = task_sums(logits, {"targets": tokens, "weights": jnp.ones(tokens.shape)}, "xent")
      return sums["loss"] / tokens.size + sum(v for k, v in aux.items() if not k.endswith("_metric")), (logits, aux)

    return jax.grad(loss, has_aux=True)(params)

  grads, (logits, aux) = loss_and_grads(nnx.to_pure_dict(params))
  return logits, aux, grads, nnx.to_pure_dict(params)


@pytest.mark.parametrize("remat,scan", [("full", False), ("dots", True)])
def test_outputs_and_gradients_unchanged(remat, scan):
  ref_logits, ref_aux, ref_grads, ref_params = _run("none", False)
  logits, aux, grads, params = _run(remat, scan)
  if scan:  # same initial values, stacked
    params, grads = _unstacked(params, BLOCKS), _unstacked(grads, BLOCKS)
  ref_params, ref_grads = _flat(ref_params), _flat(ref_grads)
  if not scan:
    params, grads = _flat(params), _flat(grads)
  assert params.keys() == ref_params.keys() == grads.keys()
  for k in ref_params:  # up to fp32 rounding: recomputation and the scan fuse differently
    np.testing.assert_array_equal(params[k], ref_params[k], err_msg=str(k))
    np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-4, atol=1e-4 * np.abs(ref_grads[k]).max(),
                               err_msg=str(k))
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  assert aux.keys() == ref_aux.keys() and "kan_reg" in aux and "moe_expert_load_metric" in aux
  for k in ref_aux:  # aux losses summed and metrics averaged over the layers, as the training step does
    np.testing.assert_allclose(aux[k], ref_aux[k], rtol=1e-5, atol=1e-7, err_msg=k)


def _eqns(blocks: str, scan: bool) -> int:
  c = _config("full", scan, blocks)
  model = nnx.eval_shape(lambda: models.build(c.model, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tokens = jax.ShapeDtypeStruct((2, 24), jnp.int32)
  grad = jax.grad(lambda p, r, x: nnx.merge(graphdef, p, r)(x).sum())
  return len(jax.make_jaxpr(grad)(nnx.to_pure_dict(params), nnx.to_pure_dict(rest), tokens).jaxpr.eqns)


def test_scanned_step_does_not_grow_with_depth():
  """What XLA compiles: the traced step of 2 or 8 layers is the same program when scanned."""
  assert _eqns("(retnet, swiglu) * 2", True) == _eqns("(retnet, swiglu) * 8", True)
  assert _eqns("(retnet, swiglu) * 8", False) > 3 * _eqns("(retnet, swiglu) * 2", False)


def test_scanned_model_counts_and_decodes_like_the_plain_one():
  blocks = "(retnet, swiglu) * 2 + ((attention, swiglu) + (swa, mlp)) * 2"  # no layer sows (generate cannot)
  plain, scanned = (models.build(_config("none", s, blocks).model, rngs=nnx.Rngs(0)) for s in (False, True))
  for fn in (lambda m: forward_flops_per_token(m, 24), active_params,
             lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))):
    assert fn(scanned) == pytest.approx(fn(plain))
  caches = [m.init_cache(2, 12) for m in (plain, scanned)]
  assert sum(x.nbytes for x in jax.tree.leaves(caches[0])) == sum(x.nbytes for x in jax.tree.leaves(caches[1]))
  prompt = jax.random.randint(jax.random.key(2), (2, 5), 0, 64)
  np.testing.assert_array_equal(generate(plain, prompt, 6), generate(scanned, prompt, 6))


def test_remat_shrinks_the_activations_the_step_keeps():
  mesh = mesh_lib.make_mesh({"data": -1})
  kept = {(r, s): memory.estimate(_config(r, s), mesh).activations for r, s in
          (("none", False), ("full", False), ("none", True), ("full", True), ("dots", True))}
  assert kept["none", True] == pytest.approx(kept["none", False], rel=0.05)  # scanning alone keeps the same
  for scan in (False, True):
    assert kept["full", scan] < kept["none", scan] / 3, kept
  assert kept["full", True] < kept["dots", True] < kept["none", True], kept


def test_bad_remat_and_unstackable_groups_fail_validation():
  c = _config("everything")
  with pytest.raises(ConfigError, match=r"model.remat='everything'; choose one of \['dots', 'dots_no_batch', 'full'"):
    validate(c, num_devices=8)
  c = _config(scan=True, blocks="(attention, moe) * 2")
  c.model.options.moe = dict(layer="moe", n_experts=4, top_k=2)
  with pytest.raises(ConfigError, match=r"repetition 1 .* differs from the first in layer0/ffn/router.seed: 0 vs 1"):
    validate(c, num_devices=8)
