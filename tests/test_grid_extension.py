"""KAN grid extension in the shared loop (train.kan_grid.extend, the train/kan_grid.py hook): shapes and
parameter counts grow at the scheduled steps, the function is kept across an extension, the optimizer
restarts without rewinding its lr schedule, a run killed after an extension resumes into the extended shapes,
bad schedules fail."""

import json
import os

import chex
import jax
import numpy as np
import optax
import pytest
from flax import nnx

import models
from experiments import kan
from train import checkpoint, config_changes, kan_grid, loop, metrics
from train import config as config_lib
from train import mesh as mesh_lib
from train import state as state_lib
from train.data import pipeline
from train.validate import validate

SCHEDULE = ((2, 8), (5, 12))  # grid 5 for steps 1-2, 8 for steps 3-5, 12 for step 6


def _config(extend=SCHEDULE):
  c = kan.get_config("local,grid=5")  # exp_sin, KAN [2, 1, 1]
  c.data.batch_size = 40
  c.train.update(dict(steps=6, log_every=1, eval_every=6, eval_steps=1, ckpt_every=2, keep_ckpts=2,
                      async_ckpt=False, progress=False, tensorboard=False))
  c.train.kan_grid.update(dict(update_every=0, extend=extend))
  return c


def _kan_params(grid: int) -> int:
  """[2, 1, 1] B-spline KAN, cubic: per edge one base weight and G + 3 spline coefficients."""
  return 3 * (1 + grid + 3)


def _final_state(c, workdir) -> dict:
  program = loop.build_program(kan_grid.config_at(c, c.train.steps), mesh_lib.make_mesh(c.mesh.shape))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every=2, keep=2)
  state, _, _ = ckpt.restore(c.train.steps, program.setup.abstract_state)
  ckpt.close()
  return jax.device_get(state)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("extend")
  return workdir, loop.run(_config(), str(workdir))


def test_loop_extends_the_grid_at_the_scheduled_steps(uninterrupted):
  workdir, summary = uninterrupted
  records = metrics.read(workdir)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6] and summary["steps"] == 6
  assert [r["grid_size"] for r in records] == [5, 5, 8, 8, 8, 12]
  assert [r["params"] for r in records] == [_kan_params(g) for g in (5, 5, 8, 8, 8, 12)]
  assert summary["params"] == _kan_params(12)
  assert records[2]["flops_per_step"] > records[1]["flops_per_step"]  # recounted for the new shapes
  assert [r["step"] for r in records if "eval_loss" in r] == [2, 5, 6]  # forced just before each extension
  assert all(np.isfinite(r["loss"]) and np.isfinite(r.get("eval_loss", 0.0)) for r in records)
  params = _final_state(_config(), workdir)["params"]
  assert [k["spline_kernel"].shape for k in params["layers"].values()] == [(2, 15, 1), (1, 15, 1)]


def test_models_load_builds_the_grid_in_force_at_the_checkpoint(uninterrupted):
  workdir, _ = uninterrupted
  loaded = nnx.to_pure_dict(nnx.state(models.load(str(workdir)), nnx.Param))
  chex.assert_trees_all_equal(jax.device_get(loaded), _final_state(_config(), workdir)["params"])


def test_extension_keeps_the_function_and_restarts_the_optimizer():
  c = _config()
  mesh = mesh_lib.make_mesh(c.mesh.shape)
  with jax.set_mesh(mesh):
    program = loop.build_program(c, mesh)
    raw = next(pipeline.build(c.data, split="train", seed=0, train=True, batch_size=c.data.batch_size))
    state = program.init_state()
    for _ in range(2):
      state, _ = program.train_step(state, loop.global_batch(raw, program.batch_sharding))
    # A rough learned function: O(1) spline coefficients, so the splines dominate the output. The
    # batch's targets are its own outputs before the extension, so the loss before is 0 and the
    # loss after is what the least-squares refit lost.
    old = jax.device_get(state)
    rng = np.random.default_rng(0)
    for layer in old["params"]["layers"].values():
      layer["spline_kernel"] = rng.normal(0.0, 0.5, layer["spline_kernel"].shape).astype(np.float32)
    outputs = np.asarray(state_lib.model_from(program.setup, old)(raw["inputs"]))
    batch = loop.global_batch({**raw, "targets": outputs}, program.batch_sharding)
    no_splines = jax.tree.map(np.zeros_like, old["params"]["layers"])
    for new_layer, layer in zip(no_splines.values(), old["params"]["layers"].values()):
      new_layer["base_kernel"] = layer["base_kernel"]
    spline_part = program.eval_step({**old, "params": {"layers": no_splines}}, batch)
    new, state = kan_grid.extend_grid(program, kan_grid.config_at(c, 2), old, batch, loop.build_program)
    after = new.eval_step(state, batch)
    # The G=5 cubic is not exactly in the G=8 space (knots move to the data's quantiles), so the
    # refit is close, not exact: it keeps > 99% of the splines' mean-square contribution.
    assert float(program.eval_step(old, batch)["loss"]) < 1e-10
    assert float(after["loss"]) < 1e-2 * float(spline_part["loss"])
    for name, layer in jax.device_get(state["params"])["layers"].items():
      np.testing.assert_array_equal(layer["base_kernel"], old["params"]["layers"][name]["base_kernel"])
      assert layer["spline_kernel"].shape[1] == 8 + 3
    counts = [s for s in jax.tree.leaves(state["opt_state"], is_leaf=lambda s: isinstance(
      s, optax.ScaleByScheduleState | optax.ScaleByAdamState)) if hasattr(s, "count")]
    assert {type(s).__name__: int(s.count) for s in counts} == {"ScaleByScheduleState": 2, "ScaleByAdamState": 0}
    assert all(not np.any(np.asarray(m)) for s in counts if hasattr(s, "mu") for m in jax.tree.leaves(s.mu))
    state, m = new.train_step(state, batch)
    assert int(state["step"]) == 3 and np.isfinite(float(m["loss"]))


class Killed(Exception):
  pass


def test_resume_after_kills_restores_the_extended_shapes(uninterrupted, tmp_path, monkeypatch):
  """Killed right after the checkpoint of an extension step (2), resumed, killed again between two
  extensions (4), resumed to the end: each resume builds the grid-8 program before restoring, and
  the run equals the uninterrupted one."""
  workdir_a, _ = uninterrupted
  c, save = _config(), checkpoint.Checkpointer.save
  for kill_at in (2, 4):
    def save_then_die(self, step, *args, kill_at=kill_at, **kwargs):
      saved = save(self, step, *args, **kwargs)
      if step == kill_at:
        raise Killed
      return saved

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_die)
    with pytest.raises(Killed):
      loop.run(c, str(tmp_path))
    monkeypatch.undo()
    assert [r["step"] for r in metrics.read(tmp_path)][-1] == kill_at
  loop.run(c, str(tmp_path))
  a, b = metrics.read(workdir_a), metrics.read(tmp_path)
  assert [(r["step"], r["loss"], r["params"]) for r in a] == [(r["step"], r["loss"], r["params"]) for r in b]
  chex.assert_trees_all_equal(_final_state(c, workdir_a), _final_state(c, tmp_path))


@pytest.mark.parametrize("schedule,match", [
  (((2, 8), (2, 12)), r"steps \[2, 2\] must increase strictly and lie inside \(0, train.steps=6\)"),
  (((0, 8),), r"lie inside \(0, train.steps=6\)"),
  (((6, 8),), r"lie inside \(0, train.steps=6\)"),
  (((2, 5),), r"grid sizes \[5\] must increase strictly from above model.grid_size=5"),
  (((2, 12), (4, 8)), r"grid sizes \[12, 8\] must increase strictly"),
  (((2, 8, 1),), r"must be \(step, grid_size\) pairs of ints"),
  ((2, 8), r"must be \(step, grid_size\) pairs of ints"),
])
def test_bad_schedules_fail_before_anything_is_built(schedule, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    validate(_config(extend=schedule), num_devices=8, process_count=1)


def test_schedule_needs_kan_layers_and_survives_a_saved_config(tmp_path):
  mlp = kan.get_config("local,layer=linear,width=4")
  mlp.train.kan_grid.extend = SCHEDULE
  with pytest.raises(config_lib.ConfigError,
                     match=r"kan_grid.extend is set but model kind 'mlp' \(layer 'linear'\)"):
    validate(mlp, num_devices=8, process_count=1)
  config_lib.save(_config(), str(tmp_path))  # JSON turns the pairs into lists
  saved = config_lib.load(str(tmp_path / "config.json"))
  validate(saved, num_devices=8, process_count=1)
  assert [kan_grid.config_at(saved, s).model.grid_size for s in range(7)] == [5, 5, 8, 8, 8, 12, 12]


def test_a_config_saved_before_the_kan_grid_section_loads_into_todays_layout(tmp_path):
  """config.json of an earlier version: KAN keys under train.grid_*, no keys added since (eval_top_k,
  profile_steps, ...). Loading it moves and fills them, so the run relaunches and resumes as before."""
  c = _config()
  old = json.loads(c.to_json())
  old["train"].update({f"grid_{k}": v for k, v in old["train"]["kan_grid"].items()})
  for key in ("kan_grid", "eval_top_k", "profile_steps", "compilation_cache_dir", "memory_check"):
    del old["train"][key]
  del old["mesh"]["dcn_shape"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  loaded = config_lib.load(str(tmp_path / "config.json"))
  assert config_changes.diff(loaded.to_dict(), c.to_dict()) == {}
  assert config_changes.diff(config_lib.upgrade(old)[0], c.to_dict()) == {}  # a checkpoint's saved config too
  assert [kan_grid.config_at(loaded, s).model.grid_size for s in range(7)] == [5, 5, 8, 8, 8, 12, 12]
