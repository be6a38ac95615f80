"""Sweeps (expansion, skip finished, resume interrupted, cluster scripts), reports and their scaling section,
and analytic FLOPs against XLA's cost analysis."""

import json
import os
import signal
import subprocess

import numpy as np
import pytest

from experiments import mqar_study
from tests.test_train_run import _launch, _wait_for_step
from train import metrics, report, scaling, sweep

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
  assert any(n.startswith("no scaling fits: each variant was run at one size") for n in result["notes"])


def test_sweep_refuses_a_changed_config_for_an_interrupted_run_before_writing(tmp_path, capsys):
  """An interrupted run keeps the config.json it was trained with: a changed key is refused, naming both values,
  before any run's config is written; --resume_with_changes accepts it and hands the option to every run."""
  root = tmp_path / "runs"
  victim, fresh = sweep.expand(SPEC, str(root))[:2]
  sweep.prepare(SPEC, victim)
  (tmp_path / "runs" / victim.name / "checkpoints").mkdir()  # what an interrupted run leaves
  assert victim.status == "interrupted" and fresh.status == "new"
  trained = open(os.path.join(victim.workdir, "config.json")).read()
  common = ["--config", SPEC, "--root", str(root), "--emit", "shell", "--config.optim.lr=0.5"]
  capsys.readouterr()
  assert sweep.main(common) == 2
  err = capsys.readouterr().err
  assert f"config error: {victim.workdir} was trained with a different config: optim.lr 0.0003 -> 0.5;" in err
  assert "--resume_with_changes=optim.lr" in err and "Traceback" not in err
  assert open(os.path.join(victim.workdir, "config.json")).read() == trained
  assert not os.path.exists(os.path.join(fresh.workdir, "config.json"))  # nothing written for any run
  assert sweep.main([*common[:-1], "--config.train.log_every=2"]) == 0  # benign: the run records it
  assert sweep.main([*common, "--resume_with_changes=optim.lr"]) == 0
  assert json.loads(open(os.path.join(victim.workdir, "config.json")).read())["optim"]["lr"] == 0.5
  script = open(root / "launch.sh").read()
  assert script.count("--resume_with_changes=optim.lr") == 4, script
  for kind, name in (("slurm", "launch.slurm"), ("tpu-vm", "launch_tpu.sh")):
    path = sweep.emit(kind, [victim], str(tmp_path / kind), extra=["--resume_with_changes=optim.lr"])
    text = "".join(p.read_text() for p in (tmp_path / kind).iterdir())
    assert os.path.basename(path) == name and "initialize=true --resume_with_changes=optim.lr" in text
    assert all(subprocess.run(["bash", "-n", str(p)]).returncode == 0 for p in (tmp_path / kind).iterdir())


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


def _final_run(root, name: str, blocks: str, *, params: float, tokens: int, flops: float, loss: float,
               schedule: str = "cosine", done: bool = True, seed: int = 0) -> None:
  """A finished run's workdir as the report reads it (one token per step, so steps = tokens)."""
  d = root / name
  d.mkdir(parents=True)
  cfg = {"model": {"kind": "lm", "blocks": blocks}, "seed": seed, "optim": {"schedule": schedule},
         "data": {"name": "text", "batch_size": 1, "seq_len": 1}, "train": {"steps": tokens}}
  (d / "config.json").write_text(json.dumps(cfg))
  step = tokens if done else tokens // 2
  (d / "metrics.jsonl").write_text(json.dumps({"step": step, "loss": loss, "eval_loss": loss, "params": params,
                                               "flops_per_step": flops / tokens}) + "\n")


def test_report_scaling_section_finds_the_compute_multiplier(tmp_path):
  """Two layer types at 2 and 3 depths (depth is size, not variant); gla is attention at 2x compute."""
  for mixer, k in (("attention", 1.0), ("gla", 2.0)):
    r = scaling.synthetic_runs(np.logspace(17, 20, 5), 7, compute_factor=k, seed=int(k))
    for i, (n, d, c, y) in enumerate(zip(r["params"], r["tokens"], r["flops"], r["loss"])):
      _final_run(tmp_path, f"{mixer}-{i}", f"({mixer}, swiglu) * {2 + i % 2}", params=n, tokens=round(d), flops=c,
                 loss=y)
  _final_run(tmp_path, "unfinished", "(gla, swiglu) * 2", params=1e8, tokens=10**9, flops=6e17, loss=1.0, done=False)
  _final_run(tmp_path, "constant-lr", "(gla, swiglu) * 2", params=1e8, tokens=10**9, flops=6e17, loss=1.0,
             schedule="constant")
  result = report.report(str(tmp_path), baseline="attention", target_flops=1e19, bootstrap=100)
  table = result["scaling_markdown"]
  rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines()[3:]}
  assert set(rows) == {"(attention, swiglu)", "(gla, swiglu)"} and rows["(gla, swiglu)"][1] == "35"
  multiplier, lo, hi = (float(x.strip("[],")) for x in rows["(gla, swiglu)"][-1].split(" ")[:3])
  assert multiplier == pytest.approx(2.0, rel=0.2) and lo <= 2.0 <= hi, table
  notes = "\n".join(result["notes"])
  assert "unfinished (500000000 of 1000000000 steps)" in notes and "'constant' ends without a decay" in notes
  assert "one seed per point" in notes
  names = {os.path.basename(p) for p in result["plots"]}
  assert {"isoflop.png", "optimal_allocation.png", "frontier.png", "multiplier.png"} <= names


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


def test_no_frontier_plot_from_one_size_per_variant(tmp_path):
  # The quickstart's shape: each mixer at one size, two seeds; nothing constrains L(C), so no frontier is drawn.
  for mixer in ("attention", "gla"):
    for seed in (0, 1):
      cfg = {"model": {"blocks": f"({mixer}, swiglu) * 2", "d_model": 64}, "seed": seed,
             "optim": {"schedule": "cosine"}, "data": {"name": "text", "batch_size": 4, "seq_len": 8},
             "train": {"steps": 10}}
      d = tmp_path / f"{mixer}-{seed}"
      d.mkdir()
      (d / "config.json").write_text(json.dumps(cfg))
      with open(d / "metrics.jsonl", "w") as f:
        for step in range(1, 11):
          f.write(json.dumps({"step": step, "loss": 3.0 - 0.1 * seed, "flops_per_step": 1e9, "params": 1e5,
                              "eval_loss": 3.0}) + "\n")
  result = report.report(str(tmp_path), bootstrap=20)
  assert not any(os.path.basename(p) in ("frontier.png", "multiplier.png") for p in result["plots"]), result["plots"]
  assert any(p.endswith("loss_vs_step.png") for p in result["plots"])
  # No table of unconstrained fits either: one note says why.
  assert result["scaling_markdown"] is None
  assert result["notes"] == ["no scaling fits: each variant was run at one size and budget (a comparison; a "
                             "scaling sweep such as experiments/scaling.py runs several)"]


def test_isoflop_curves_and_mqar_plot_from_synthetic_runs(tmp_path):
  # Three compute budgets x three sizes: at fixed C the loss is U-shaped in params (isoFLOP).
  for budget in (1e12, 1e13, 1e14):
    for params in (1e5, 1e6, 1e7):
      steps = 10
      loss = 2.0 + (np.log10(params) - np.log10(budget) / 2 + 0.5) ** 2 * 0.1  # minima inside the sizes
      cfg = {"model": {"blocks": "(gla, swiglu) * 2", "d_model": int(params ** 0.5)}, "optim": {"schedule": "cosine"},
             "data": {"name": "mqar", "batch_size": 4, "seq_len": 8, "vocab_size": 64}, "train": {"steps": steps}}
      d = tmp_path / f"c{budget:.0e}-p{params:.0e}"
      d.mkdir()
      (d / "config.json").write_text(json.dumps(cfg))
      with open(d / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
          f.write(json.dumps({"step": step, "loss": loss, "flops_per_step": budget / steps, "params": params,
                              "eval_accuracy": 0.5}) + "\n")
  result = report.report(str(tmp_path), bootstrap=20)
  names = {os.path.basename(p) for p in result["plots"]}
  assert {"isoflop.png", "optimal_allocation.png"} <= names, result["notes"]
  assert "frontier.png" not in names  # 3 budgets: too few compute-optimal points for a frontier, none drawn
  assert "mqar_accuracy.png" not in names  # one study's plot: experiments/mqar_study.py draws it
  state_plot = mqar_study.plot_state_size(str(tmp_path))
  assert state_plot == os.path.join(str(tmp_path), "mqar_accuracy.png")
  assert all(os.path.getsize(p) > 1000 for p in [*result["plots"], state_plot])
