"""Sweeps (expansion, skip finished, resume interrupted, cluster scripts), reports and power-law fits,
and analytic FLOPs against XLA's cost analysis."""

import json
import os
import signal
import subprocess

import numpy as np
import pytest

from tests.test_train_run import _launch, _wait_for_step
from train import metrics, report, sweep
from train.scaling import fit_power_law

SPEC = "tests/data/sweep_experiment.py:steps=6"


def test_expansion_names_and_overrides(tmp_path):
  runs = sweep.expand(SPEC, str(tmp_path))
  assert [r.name for r in runs] == ["blocks-attention_swiglu_x_2_seed-0", "blocks-attention_swiglu_x_2_seed-1",
                                    "blocks-attention_mlp_x_2_seed-0", "blocks-attention_mlp_x_2_seed-1"]
  assert all(r.status == "new" for r in runs)
  config = sweep.resolve(SPEC, runs[3].overrides)
  assert config.model.blocks == "(attention, mlp) * 2" and config.seed == 1 and config.train.steps == 6


def test_bad_sweep_key_fails_before_running(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text(open("tests/data/sweep_experiment.py").read().replace('"seed": seed', '"sed": seed'))
  with pytest.raises(sweep.config_lib.ConfigError, match=r"unknown config key 'sed'.*seed"):
    sweep.expand(str(bad), str(tmp_path / "runs"))


def test_sweep_runs_skips_finished_and_resumes_interrupted(tmp_path):
  root = tmp_path / "runs"
  runs = sweep.expand(SPEC, str(root))
  # Interrupt one run mid-way (kill -9 after its first checkpoint).
  victim = runs[0]
  sweep.prepare(SPEC, victim)
  proc = _launch(os.path.join(victim.workdir, "config.json"), victim.workdir, delay=0.4)
  _wait_for_step(victim.workdir, 3, proc, checkpoint=True)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert victim.status == "interrupted"
  assert sweep.main(["--config", SPEC, "--root", str(root), "--parallel", "2"]) == 0
  for r in runs:
    assert r.status == "done", open(os.path.join(r.workdir, "log.txt")).read()[-2000:]
    assert [m["step"] for m in metrics.read(r.workdir)] == list(range(1, 7))
  assert "resumed from" in open(os.path.join(victim.workdir, "log.txt")).read()
  mtimes = {r.name: os.path.getmtime(os.path.join(r.workdir, "summary.json")) for r in runs}
  assert sweep.main(["--config", SPEC, "--root", str(root)]) == 0  # everything done: nothing reruns
  assert mtimes == {r.name: os.path.getmtime(os.path.join(r.workdir, "summary.json")) for r in runs}

  result = report.report(str(root))
  assert len(result["rows"]) == 4
  assert "| blocks | n |" in result["markdown"] and "± " in result["markdown"]  # seeds averaged: n = 2
  assert all(os.path.getsize(p) > 1000 for p in result["plots"])
  assert any("no power-law fit" in n for n in result["notes"])  # one size per variant: says so


@pytest.mark.parametrize("kind,needle", [("slurm", "#SBATCH --array=0-3"), ("tpu-vm", "--worker=all"),
                                         ("shell", "python -m train --config")])
def test_emit_cluster_scripts(tmp_path, kind, needle):
  """Every emitted script parses and names every run (tests/test_launchers.py runs them)."""
  runs = sweep.expand(SPEC, str(tmp_path))
  path = sweep.emit(kind, runs, str(tmp_path))
  scripts = [p for p in tmp_path.iterdir() if p.is_file()]
  text = "".join(p.read_text() for p in scripts)
  assert needle in open(path).read() and all(r.workdir in text for r in runs)
  assert all(subprocess.run(["bash", "-n", str(p)]).returncode == 0 for p in scripts)


def _fake_run(root, name, config, losses, flops_per_step):
  d = root / name
  d.mkdir(parents=True)
  (d / "config.json").write_text(json.dumps(config))
  with open(d / "metrics.jsonl", "w") as f:
    for step, loss in enumerate(losses, 1):
      f.write(json.dumps({"step": step, "loss": loss, "flops_per_step": flops_per_step, "params": 1000}) + "\n")


def test_report_recovers_power_law_exponent(tmp_path):
  rng = np.random.default_rng(0)
  truth = {"attention": (1.8, 400.0, 0.25), "gla": (2.0, 900.0, 0.3)}
  for mixer, (e, a, alpha) in truth.items():
    for i, width in enumerate([32, 64, 96, 128, 192, 256, 384]):
      steps, fps = 10, 1e9 * 2 ** i
      final = e + a * (fps * steps) ** (-alpha) * (1 + 0.003 * rng.standard_normal())
      cfg = {"model": {"blocks": f"({mixer}, swiglu) * 2", "d_model": width}, "seed": 0}
      _fake_run(tmp_path, f"{mixer}-{width}", cfg, [final + 1.0] * (steps - 1) + [final], fps)
  result = report.report(str(tmp_path))
  for mixer, (_, _, alpha) in truth.items():
    note = next(n for n in result["notes"] if mixer in n)
    fitted = float(note.split("α = ")[1].split(" ")[0])
    assert fitted == pytest.approx(alpha, rel=0.05), note
  rows = list(open(tmp_path / "runs.csv"))
  assert len(rows) == 15 and rows[0].startswith("run,")


def test_power_law_fit_errors_and_uncertainty():
  c = np.logspace(10, 15, 6)
  fit = fit_power_law(c, 2.0 + 50 * c ** -0.2)
  assert fit.alpha == pytest.approx(0.2, rel=1e-3) and fit.E == pytest.approx(2.0, rel=1e-3)
  assert np.isfinite(fit.alpha_err) and fit.alpha_err < 0.01
  with pytest.raises(ValueError, match="at least 4 runs"):
    fit_power_law([1e10, 1e11, 1e12], [3.0, 2.5, 2.2])


def test_analytic_flops_match_xla_cost_analysis_on_baseline_lm():
  from experiments import common
  from train import mesh as mesh_lib
  from train import mfu
  from train.data import pipeline
  from train.loop import build_program, global_batch

  c = common.base_config()
  common.mqar_data(c, vocab_size=256, num_pairs=8, seq_len=128)
  c.model.update(dict(d_model=128, n_heads=4, d_ff=384, blocks=common.blocks("attention", "swiglu", 2)))
  c.data.batch_size = 8
  import jax

  p = build_program(c, mesh_lib.make_mesh(dict(data=1), devices=jax.devices()[:1]))
  batch = next(pipeline.build(c.data, split="train", seed=0, train=True, batch_size=8))
  xla = p.train_step.lower(p.init_state(), global_batch(batch, p.batch_sharding)).compile().cost_analysis()["flops"]
  analytic = mfu.train_flops_per_step(p.setup.abstract_model, seq_len=128, batch_size=8)
  assert analytic == pytest.approx(xla, rel=0.10)


def test_isoflop_curves_and_mqar_plot_from_synthetic_runs(tmp_path):
  # Three compute budgets x three sizes: at fixed C the loss is U-shaped in params (isoFLOP).
  for budget in (1e12, 1e13, 1e14):
    for params in (1e5, 1e6, 1e7):
      steps = 10
      loss = 2.0 + (np.log10(params) - np.log10(budget) / 2 + 1) ** 2 * 0.1
      cfg = {"model": {"blocks": "(gla, swiglu) * 2", "d_model": int(params ** 0.5)}, "data": {"name": "mqar"}}
      d = tmp_path / f"c{budget:.0e}-p{params:.0e}"
      d.mkdir()
      (d / "config.json").write_text(json.dumps(cfg))
      with open(d / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
          f.write(json.dumps({"step": step, "loss": loss, "flops_per_step": budget / steps, "params": params,
                              "eval_accuracy": 0.5}) + "\n")
  result = report.report(str(tmp_path))
  names = {os.path.basename(p) for p in result["plots"]}
  assert {"isoflop.png", "mqar_accuracy.png", "scaling.png"} <= names
  assert all(os.path.getsize(p) > 1000 for p in result["plots"])
