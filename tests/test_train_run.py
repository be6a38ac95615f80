"""Whole runs: kill -9 and resume == uninterrupted, SIGTERM saves, NaN stops, restore on another mesh,
workdir contents, and a 2-process jax.distributed run on localhost."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from tests.foundation_configs import tiny_lm
from train import checkpoint, loop, metrics
from train import config as config_lib
from train import mesh as mesh_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs `python -m train` with 8 fake CPU devices (like this test process) and, when asked, a
# delay per step so the test can signal it mid-training.
LAUNCH = """
import os, sys, time
import jax
jax.config.update("jax_num_cpu_devices", int(os.environ.get("ABLAX_TEST_DEVICES", "8")))
from train import loop
delay = float(os.environ.get("ABLAX_TEST_STEP_DELAY", "0"))
if delay:
  real = loop.global_batch
  loop.global_batch = lambda *a: (time.sleep(delay), real(*a))[1]
from train.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _launch(config_path, workdir, *extra, delay=0.0, devices=8):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "ABLAX_TEST_STEP_DELAY": str(delay),
         "ABLAX_TEST_DEVICES": str(devices), "PYTHONPATH": ROOT}
  return subprocess.Popen([sys.executable, "-c", LAUNCH, "--config", str(config_path), "--workdir", str(workdir),
                           *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _committed_checkpoints(workdir) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _wait_for_step(workdir, step, proc, timeout=240, checkpoint=False):
  """Until metrics show `step` (and, if asked, a checkpoint is committed)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"run ended early (rc={proc.returncode}): {proc.stderr.read()[-2000:]}")
    logged = os.path.exists(os.path.join(workdir, "metrics.jsonl")) and any(
      r["step"] >= step for r in metrics.read(workdir))
    if logged and (not checkpoint or _committed_checkpoints(workdir)):
      return
    time.sleep(0.05)
  proc.kill()
  raise AssertionError(f"step {step} not reached in {timeout}s")


@pytest.fixture(scope="module")
def run_config():
  c = tiny_lm(steps=10)
  c.train.update(dict(ckpt_every=2, eval_every=5))
  return c


@pytest.fixture(scope="module")
def uninterrupted(run_config, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  summary = loop.run(run_config, str(workdir))
  return workdir, summary


def test_workdir_holds_config_metrics_events_checkpoints(uninterrupted):
  workdir, summary = uninterrupted
  records = metrics.read(workdir)
  assert [r["step"] for r in records] == list(range(1, 11))
  for key in ("loss", "accuracy", "grad_norm", "lr", "tokens_per_sec", "step_time", "mfu", "params",
              "params_non_embedding", "flops_per_step"):
    assert all(np.isfinite(r[key]) for r in records), key
  assert "eval_loss" in records[4] and "eval_accuracy" in records[-1]
  # the eval set's own noise and input-blind baseline come with every eval
  assert 0 < records[4]["eval_loss_se"] < records[4]["eval_loss"] and 0 < records[4]["eval_accuracy_se"] < 0.5
  assert records[4]["eval_unigram_loss"] == records[-1]["eval_unigram_loss"] > 0
  assert records[0]["params"] > records[0]["params_non_embedding"] > 0
  assert records[0]["params_active"] == records[0]["params"]  # dense model: every parameter is active
  # KV caches of both attention layers at T = 24: 2 layers x [(k, v) x 24 x 2 kv heads x 8 dims x 4 bytes
  # + each slot's document and position (int32) + the cursor (segment, position, document; int32)]
  assert records[0]["decode_state_bytes"] == 2 * (2 * 24 * 2 * 8 * 4 + 2 * 24 * 4 + 3 * 4)
  assert os.listdir(workdir / "tensorboard")
  assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 10
  assert summary["steps"] == 10 and summary["loss"] == records[-1]["loss"]
  meta = json.loads((workdir / "checkpoints" / "10" / "meta" / "metadata").read_text())
  assert meta["step"] == 10 and meta["config"]["model"]["d_model"] == 32 and "jax" in meta["versions"]
  assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [6, 8, 10]  # keep 3


def test_kill9_and_resume_equals_uninterrupted(run_config, uninterrupted, tmp_path, capsys):
  workdir_a, _ = uninterrupted
  config_lib.save(run_config, str(tmp_path / "cfg"))
  workdir = tmp_path / "killed"
  proc = _launch(tmp_path / "cfg" / "config.json", workdir, delay=0.3)
  _wait_for_step(workdir, 5, proc, checkpoint=True)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert 2 <= checkpoint.Checkpointer(str(workdir / "checkpoints"), every=2, keep=3).latest_step() < 10
  loop.run(run_config, str(workdir))
  assert "resumed from" in capsys.readouterr().err
  a = [(r["step"], r["loss"]) for r in metrics.read(workdir_a)]
  b = [(r["step"], r["loss"]) for r in metrics.read(workdir)]
  assert a == b  # bit-exact losses, each step logged once


def test_sigterm_saves_a_checkpoint_before_exit(run_config, tmp_path):
  config_lib.save(run_config, str(tmp_path / "cfg"))
  workdir = tmp_path / "term"
  proc = _launch(tmp_path / "cfg" / "config.json", workdir, "--config.train.ckpt_every=100", delay=0.3)
  _wait_for_step(workdir, 3, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert "SIGTERM: saved a checkpoint at step" in err
  saved = int(err.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
  assert 3 <= saved < 10
  assert checkpoint.Checkpointer(str(workdir / "checkpoints"), every=100, keep=3).latest_step() == saved


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  c = tiny_lm(steps=6)
  c.optim.update(dict(lr=1e30, warmup_steps=0, schedule="constant", clip_norm=0.0))
  c.train.ckpt_every = 1
  with pytest.raises(loop.NonFiniteLoss, match=r"NaN/inf at step (\d+).*checkpoint \(step (\d+)\)") as e:
    loop.run(c, str(tmp_path))
  bad, kept = (int(x) for x in re.search(r"step (\d+);.*\(step (\d+)\)", str(e.value)).groups())
  assert 1 < bad < 6 and kept == bad - 1
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert max(steps) == kept  # nothing saved from the bad step on
  records = metrics.read(tmp_path)
  assert all(np.isfinite(r["loss"]) for r in records if r["step"] < bad)
  assert not any(np.isfinite(r["loss"]) for r in records if r["step"] >= bad)


def test_restore_onto_a_different_mesh(run_config, uninterrupted):
  workdir, _ = uninterrupted
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), every=2, keep=3)
  step = ckpt.latest_step()
  same = loop.build_program(run_config, mesh_lib.make_mesh(run_config.mesh.shape))
  other = loop.build_program(run_config, mesh_lib.make_mesh(dict(data=2, tensor=4)))
  s_same, data_same, _ = ckpt.restore(step, same.setup.abstract_state)
  s_other, data_other, _ = ckpt.restore(step, other.setup.abstract_state)
  assert data_same == data_other
  leaves_other = jax.tree.leaves(s_other["params"])
  assert any("tensor" in str(x.sharding.spec) for x in leaves_other)
  chex.assert_trees_all_equal(jax.device_get(s_same["params"]), jax.device_get(s_other["params"]))
  batch = next(iter([loop.pipeline.build(run_config.data, split="train", seed=0, train=True, batch_size=8)]))
  new_state, m = other.train_step(s_other, loop.global_batch(next(batch), other.batch_sharding))
  assert np.isfinite(float(m["loss"])) and int(new_state["step"]) == step + 1


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_process_distributed_run_agrees(tmp_path):
  c = tiny_lm(steps=4)
  c.train.update(dict(ckpt_every=2, eval_every=4))
  config_lib.save(c, str(tmp_path / "cfg"))
  port = _free_port()
  procs = [
    _launch(tmp_path / "cfg" / "config.json", tmp_path / "run", "--config.distributed.initialize=true",
            f"--config.distributed.coordinator_address=localhost:{port}", "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={i}", devices=1)
    for i in range(2)
  ]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  summaries = [json.loads(out[out.index("{"):]) for out, _ in outs]
  assert summaries[0]["steps"] == summaries[1]["steps"] == 4
  assert float(summaries[0]["loss"]) == pytest.approx(float(summaries[1]["loss"]), rel=1e-6)
  assert summaries[0]["eval_loss"] == pytest.approx(summaries[1]["eval_loss"], rel=1e-6)
  records = metrics.read(tmp_path / "run")
  assert [r["step"] for r in records] == [1, 2, 3, 4]
