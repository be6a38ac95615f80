"""The sharded train step: mesh equivalence, real updates, grad accumulation, schedules, groups."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.foundation_configs import tiny_lm
from train import mesh as mesh_lib
from train import optim
from train import state as state_lib
from train.data import pipeline
from train.loop import build_program, global_batch


def _batch(config, n=1):
  it = pipeline.build(config.data, split="train", seed=0, train=True, batch_size=config.data.batch_size)
  return [next(it) for _ in range(n)]


def _train(config, mesh, batches, p=None):
  p = p or build_program(config, mesh)
  state = p.init_state()
  out = []
  for b in batches:
    state, m = p.train_step(state, global_batch(b, p.batch_sharding))
    out.append(jax.device_get(m))
  return p, state, out


@pytest.fixture(scope="module")
def config():
  c = tiny_lm(batch_size=8)
  c.mesh.shape.update(dict(data=4, tensor=2))
  return c


@pytest.fixture(scope="module")
def program(config):
  return build_program(config, mesh_lib.make_mesh(config.mesh.shape))


def test_sharded_step_equals_single_device(config, program):
  batches = _batch(config, 2)
  p8, s8, m8 = _train(config, None, batches, program)
  single = mesh_lib.make_mesh(dict(data=1), devices=jax.devices()[:1])
  _, s1, m1 = _train(config, single, batches)
  specs = [sh.spec for sh in jax.tree.leaves(p8.setup.shardings["params"])]
  assert any("tensor" in str(s) for s in specs) and p8.batch_sharding.spec[0] == "data"
  for a, b in zip(m8, m1):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
  chex.assert_trees_all_close(jax.device_get(s8["params"]), jax.device_get(s1["params"]), rtol=2e-4, atol=2e-6)


def test_params_and_optimizer_state_really_change(config, program):
  p = program
  state = p.init_state()
  before = jax.device_get(state["params"])
  opt_before = jax.device_get(state["opt_state"])
  state, _ = p.train_step(state, global_batch(_batch(config)[0], p.batch_sharding))
  after = jax.device_get(state["params"])
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after))
  assert all(changed), "every parameter must receive an update"
  assert int(state["step"]) == 1
  counts = [x for x in jax.tree.leaves(jax.device_get(state["opt_state"])) if np.ndim(x) == 0]
  counts_before = [x for x in jax.tree.leaves(opt_before) if np.ndim(x) == 0]
  assert counts and all(int(c) == int(b) + 1 for c, b in zip(counts, counts_before))
  # The merged model sees the new parameters (no silently dropped NNX update).
  model = state_lib.model_from(p.setup, state)
  emb = nnx.state(model, nnx.Param)["embed"]["embedding"]
  np.testing.assert_array_equal(np.asarray(emb[...]), after["embed"]["embedding"])


def test_gradient_accumulation_matches_full_batch(config, program):
  batch = _batch(config)[0]
  mesh = program.mesh
  _, full, m_full = _train(config, mesh, [batch], program)
  config.optim.grad_accum = 2
  try:
    _, acc, m_acc = _train(config, mesh, [batch])
  finally:
    config.optim.grad_accum = 1
  np.testing.assert_allclose(m_acc[0]["loss"], m_full[0]["loss"], rtol=1e-5)
  np.testing.assert_allclose(m_acc[0]["grad_norm"], m_full[0]["grad_norm"], rtol=1e-4)
  chex.assert_trees_all_close(jax.device_get(acc["params"]), jax.device_get(full["params"]), rtol=2e-4, atol=2e-6)


def test_schedules():
  c = tiny_lm().optim
  c.update(dict(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.2))
  cos = optim.schedule(c, 110)
  assert float(cos(0)) == pytest.approx(0.1) and float(cos(4)) == pytest.approx(0.5)
  assert float(cos(10)) == pytest.approx(1.0) and float(cos(110)) == pytest.approx(0.1)
  assert float(cos(60)) == pytest.approx(0.55, abs=1e-3)  # half-way through the cosine
  c.schedule = "wsd"
  wsd = optim.schedule(c, 110)
  assert float(wsd(50)) == pytest.approx(1.0) and float(wsd(90)) == pytest.approx(1.0)
  assert float(wsd(100)) == pytest.approx(0.55) and float(wsd(110)) == pytest.approx(0.1)
  c.schedule = "constant"
  assert float(optim.schedule(c, 110)(80)) == 1.0


def test_weight_decay_mask_and_group_lr_multiplier():
  from layers.core import make_param

  class Tiny(nnx.Module):
    def __init__(self, rngs):
      ones = nnx.initializers.ones
      self.w = make_param(ones, rngs.params(), (2, 2), jnp.float32, ("embed", "mlp"))
      self.scale = make_param(ones, rngs.params(), (2,), jnp.float32, ("norm",), optim_group="no_decay")
      self.gate = make_param(ones, rngs.params(), (2, 2), jnp.float32, (None, None), optim_group="no_decay")
      self.coef = make_param(ones, rngs.params(), (3, 2), jnp.float32, (None, None), optim_group="activation")

  params = nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)
  labels = optim.group_labels(params)
  assert labels == {"w": "default", "scale": "no_decay", "gate": "no_decay", "coef": "activation"}
  c = tiny_lm().optim
  c.update(dict(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5, clip_norm=0.0))
  c.groups.activation.update(dict(lr_mult=2.0, weight_decay=0.25))
  tx, _ = optim.make(c, params, 10)
  pure = nnx.to_pure_dict(params)
  zero = jax.tree.map(jnp.zeros_like, pure)
  updates, _ = tx.update(zero, tx.init(pure), pure)  # zero grads: only decoupled decay moves params
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["scale"], 0.0)
  np.testing.assert_array_equal(updates["gate"], 0.0)
  np.testing.assert_allclose(updates["coef"], -0.2 * 0.25 * np.ones((3, 2)), rtol=1e-6)


def test_unknown_param_group_is_a_clear_error():
  c = tiny_lm().optim
  with pytest.raises(ValueError, match=r"optim_group='experts'.*config.optim.groups.experts"):
    optim.group_settings(c, {"default", "experts"})


def test_indivisible_parameter_sharding_names_the_parameter():
  mesh = mesh_lib.make_mesh(dict(data=1, tensor=8))
  with pytest.raises(ValueError, match=r"parameter w dim 1 .*'mlp', size 12.*not divisible"):
    mesh_lib.logical_to_spec(("embed", "mlp"), {"mlp": "tensor"}, mesh, (4, 12), "w")


def test_eval_forward_switches_off_training_noise():
  from layers import registry
  from layers.context import LayerContext
  from train.step import forward

  act = registry.build("activation", "rational", LayerContext(d_model=4), rngs=nnx.Rngs(0), version="D")
  graphdef, params, rest = nnx.split(act, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  x = jnp.linspace(-2.0, 2.0, 8)
  train_out, _, _, new_rest = forward(graphdef, params, rest, {"inputs": x})
  train_again, _, _, _ = forward(graphdef, params, new_rest, {"inputs": x})
  assert not np.allclose(train_out, train_again)  # fresh numerator noise each training step
  eval_a = forward(graphdef, params, rest, {"inputs": x}, deterministic=True)[0]
  eval_b = forward(graphdef, params, new_rest, {"inputs": x}, deterministic=True)[0]
  np.testing.assert_array_equal(eval_a, eval_b)
  clean = registry.build("activation", "rational", LayerContext(d_model=4), rngs=nnx.Rngs(0), version="B")
  np.testing.assert_allclose(eval_a, clean(x), rtol=1e-6)  # D without noise is B


def test_loop_enables_expert_parallelism_under_its_mesh():
  """build_program + jax.set_mesh (as loop.run does): the MoE ffn exchanges tokens all-to-all."""
  c = tiny_lm(batch_size=8)
  c.model.blocks = "(attention, moe) * 1"
  c.model.options.moe = dict(n_experts=8, top_k=2)
  c.mesh.shape.update(dict(data=1, expert=8))
  mesh = mesh_lib.make_mesh(c.mesh.shape)
  with jax.set_mesh(mesh):
    p = build_program(c, mesh)
    state = p.init_state()
    batch = global_batch(_batch(c)[0], p.batch_sharding)
    hlo = p.train_step.lower(state, batch).compile().as_text()
    state, m = p.train_step(state, batch)
  assert "all-to-all" in hlo
  assert np.isfinite(float(m["loss"])) and "aux/moe_load_balance" in m
  expert_specs = [sh.spec for sh in jax.tree.leaves(p.setup.shardings["params"]) if "expert" in str(sh.spec)]
  assert expert_specs  # expert weights live on the expert axis


def test_bf16_compute_keeps_fp32_params_and_optimizer_state():
  c = tiny_lm(batch_size=8)
  c.model.dtype = "bfloat16"
  c.mesh.shape.update(dict(data=8))
  p = build_program(c, mesh_lib.make_mesh(c.mesh.shape))
  state, m = p.train_step(p.init_state(), global_batch(_batch(c)[0], p.batch_sharding))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state["params"]))
  assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state["opt_state"]))
  assert m["loss"].dtype == jnp.float32 and np.isfinite(float(m["loss"]))
  model = state_lib.model_from(p.setup, state)
  logits = model(jnp.zeros((1, 4), jnp.int32))
  assert logits.dtype == jnp.float32  # computed in bf16, returned as fp32 logits
  assert model.blocks[0].mixer.q(jnp.ones((1, 32))).dtype == jnp.bfloat16


def test_kan_grid_update_in_the_shared_loop(tmp_path):
  from train import config as config_lib
  from train import kan_grid, loop

  c = config_lib.load("experiments/kan.py:local,grid=5")
  config_lib.apply_overrides(c, ["--config.train.kan_grid.update_every=2", "--config.train.steps=4",
                                 "--config.train.progress=false", "--config.mesh.shape.data=8",
                                 "--config.data.batch_size=200"])
  p = build_program(c, mesh_lib.make_mesh(c.mesh.shape))
  state = p.init_state()
  batch = global_batch(_batch(c)[0], p.batch_sharding)
  state, _ = p.train_step(state, batch)
  before = jax.device_get(state)
  predict = jax.jit(lambda s, x: state_lib.model_from(p.setup, s)(x))
  y_before = predict(state, batch["inputs"])
  hook = kan_grid.KanGrid(c, build_program)
  hook.check(p)
  state = hook.update(p)(state, batch)
  after = jax.device_get(state)
  grids = [(a, b) for a, b in zip(jax.tree.leaves(before["rest"]), jax.tree.leaves(after["rest"]))]
  assert grids and all(not np.allclose(a, b) for a, b in grids)  # knots moved to the data
  np.testing.assert_allclose(predict(state, batch["inputs"]), y_before, atol=0.05)  # function kept
  summary = loop.run(c, str(tmp_path))  # the loop calls it every 2 steps
  assert summary["steps"] == 4 and np.isfinite(summary["eval_loss"])
  lm = tiny_lm()
  lm.train.kan_grid.update_every = 2
  with pytest.raises(config_lib.ConfigError, match=r"kan_grid.update_every.*no update_grid"):
    kan_grid.KanGrid(lm, build_program).check(build_program(lm, mesh_lib.make_mesh(c.mesh.shape)))
