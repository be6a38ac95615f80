"""Pod scale: hybrid ICI x DCN meshes (slices injected on fake CPU devices), FSDP as the paper-scale
layout, and the per-device memory estimate: close to XLA's count for the compiled step, and a config
that cannot fit is refused with what to change before anything compiles."""

import dataclasses
import functools
import os
import re
import subprocess
import sys

import jax
import pytest

from tests.foundation_configs import tiny_lm
from train import loop, memory
from train import mesh as mesh_lib
from train.config import ConfigError
from train.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_hybrid_mesh_keeps_each_slice_inside_the_ici_axes():
  devices = jax.devices()  # 8 fake CPU devices, here in 2 slices of 4 (interleaved, to see the grouping work)
  slice_of = {d: d.id % 2 for d in devices}.__getitem__
  mesh = mesh_lib.make_mesh({"fsdp": -1}, devices, dcn_shape={"data": 2}, slice_of=slice_of)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "expert": 1, "sequence": 1}
  for i, row in enumerate(mesh.devices[:, :, 0, 0, 0]):  # along data: one slice per index; fsdp: inside a slice
    assert {slice_of(d) for d in row} == {i}
  mesh = mesh_lib.make_mesh({"fsdp": 2, "tensor": 2}, devices, dcn_shape={"fsdp": 2}, slice_of=slice_of)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2, "expert": 1, "sequence": 1}
  for half in (mesh.devices[0, :2], mesh.devices[0, 2:]):  # fsdp = dcn 2 x ici 2: outer half = one slice
    assert len({slice_of(d) for d in half.flat}) == 1


@pytest.mark.parametrize("shape,dcn,match", [
  ({"fsdp": -1}, {"data": 4}, r"must equal the product of dcn_mesh_shape.*number of TPU slices"),
  ({"fsdp": 3}, {"data": 2}, r"mesh .* needs 3 devices, have 4"),
  ({"fsdp": -1}, {"data": 3}, r"do not split into that many equal slices"),
  ({"fsdp": -1}, {"data": 0}, r"dcn_shape sizes must be >= 1"),
])
def test_hybrid_mesh_errors_name_the_fix(shape, dcn, match):
  with pytest.raises(ValueError, match=match):
    mesh_lib.make_mesh(shape, dcn_shape=dcn, slice_of=lambda d: d.id // 4)


def test_without_slices_the_processes_are_the_slices():
  assert mesh_lib.device_slice(jax.devices()[0]) == 0  # CPU devices have no slice_index: process 0
  with pytest.raises(ValueError, match="Number of slices 1"):
    mesh_lib.make_mesh({"fsdp": -1}, dcn_shape={"data": 2})


def _config(**mesh_shape):
  c = tiny_lm(batch_size=48)
  c.data.update(dict(seq_len=128, num_pairs=8))
  c.model.update(dict(d_model=128, d_ff=256))
  c.mesh.shape.update(mesh_shape)
  return c


LAYOUTS = {"data": {"data": 8}, "fsdp": {"data": 1, "fsdp": 8}}


@functools.cache
def _compiled(layout: str):
  c = _config(**LAYOUTS[layout])
  mesh = mesh_lib.make_mesh(c.mesh.shape)
  program = loop.build_program(c, mesh)
  batch = next(pipeline.build(c.data, split="train", seed=0, train=True, batch_size=c.data.batch_size))
  with jax.set_mesh(mesh):
    return program.train_step.lower(program.setup.abstract_state,
                                    loop.global_batch(batch, program.batch_sharding)).compile()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_estimate_is_within_1_5x_of_xla_memory_analysis(layout):
  """The estimate (from shapes only) vs XLA's own count for the compiled step on one of 8 devices."""
  c = _config(**LAYOUTS[layout])
  est = memory.estimate(c, mesh_lib.make_mesh(c.mesh.shape))
  assert est.examples_per_device == 6 and est.activations > est.params  # activation-dominated at this size
  assert 1 / 1.5 < est.total / memory.compiled_bytes(_compiled(layout)) < 1.5


def test_fsdp_gathers_parameters_not_activations():
  """With parameters and the batch split over the same axis, the compiled step all-gathers weights
  (shapes without the batch) and keeps activations split; the residual-stream hints make XLA do so."""
  gathered = re.findall(r"= \w+\[([\d,]*)\][^ ]* all-gather\(", _compiled("fsdp").as_text())
  assert gathered and all(not shape.startswith("48,") for shape in gathered), gathered  # 48 = the batch


def test_fsdp_shards_parameters_gradients_and_optimizer_state():
  setup = loop.build_program(_config(data=1, fsdp=8), mesh_lib.make_mesh({"fsdp": 8})).setup
  kernel = setup.shardings["params"]["blocks"][0]["ffn"]["up"]["kernel"]  # [embed, mlp]
  moments = [s for s in jax.tree.leaves(setup.shardings["opt_state"]) if s.is_equivalent_to(kernel, 2)]
  assert kernel.spec[0] == "fsdp" and len(moments) >= 2  # Adam's mu and nu laid out as the parameter
  data = memory.estimate(_config(data=8), mesh_lib.make_mesh({"data": 8}))
  fsdp = memory.estimate(_config(data=1, fsdp=8), mesh_lib.make_mesh({"fsdp": 8}))
  # nearly every parameter has an "embed" dim (split 8 ways); the few without one (e.g. per-head gains) stay whole
  assert data.params / 8 < fsdp.params < data.params / 7
  assert (fsdp.grads, fsdp.opt_state) == (fsdp.params, pytest.approx(2 * fsdp.params, rel=0.01))  # Adam: mu, nu
  assert fsdp.activations == data.activations  # the batch is split 8 ways either way


def test_a_step_that_cannot_fit_is_refused_before_anything_compiles(tmp_path, monkeypatch):
  c = _config()
  c.train.device_memory_gib = 0.02  # 20 MiB, below the ~30 MB this step needs (see the XLA comparison)
  monkeypatch.setattr(loop, "build_program", lambda *a: pytest.fail("compiled before the memory check"))
  with pytest.raises(ConfigError) as err:
    loop.run(c, str(tmp_path))
  msg = str(err.value)
  for needle in ("per device at 6 examples per device", "activations", "GiB a device has (train.device_memory_gib)",
                 "model.remat='full'", "optim.grad_accum=2", "mesh.shape: fsdp=-1"):
    assert needle in msg, (needle, msg)
  c.train.memory_check = False
  monkeypatch.setattr(loop, "_train", lambda *a: "trained")
  assert loop.run(c, str(tmp_path)) == "trained"


@dataclasses.dataclass
class _Device:
  device_kind: str
  stats: dict | None = None

  def memory_stats(self):
    return self.stats


def test_device_memory_from_stats_then_table_then_unknown():
  c = tiny_lm()
  assert memory.device_memory(c, _Device("NVIDIA H100 80GB HBM3", {"bytes_limit": 123})) == (
    123, "NVIDIA H100 80GB HBM3 memory_stats")
  assert memory.device_memory(c, _Device("TPU v5 lite"))[0] == 16 * memory.GiB
  assert memory.device_memory(c, jax.devices()[0])[0] is None  # CPU: nothing to check against
  c.train.device_memory_gib = 2.0
  assert memory.device_memory(c, jax.devices()[0]) == (2 * memory.GiB, "train.device_memory_gib")


def test_memory_cli_plans_a_run_on_more_devices_than_here():
  out = subprocess.run([sys.executable, "-m", "train.memory", "--config", "tests/data/sweep_experiment.py",
                        "--devices", "16", "--device_memory_gib", "0.0001", "--config.mesh.shape.fsdp=4",
                        "--config.data.batch_size=32"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr[-2000:]
  mesh = "{'data': 4, 'fsdp': 4, 'tensor': 1, 'expert': 1, 'sequence': 1}"
  assert f"on 16 devices (mesh {mesh})" in out.stdout, out.stdout
  assert "2 examples per device" in out.stdout and "does not fit in 90% of 0.0001 GiB" in out.stdout
