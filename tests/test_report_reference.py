"""The scaling plots' reference line for text runs is the eval set's unigram entropy."""

import json

import numpy as np
import pytest

from train import baselines, report


def _isoflop_text_runs(root, unigram_loss: float) -> None:
  """Three budgets x three sizes of finished text runs, U-shaped in params at each budget."""
  for budget in (1e12, 1e13, 1e14):
    for params in (1e5, 1e6, 1e7):
      loss = 2.0 + (np.log10(params) - np.log10(budget) / 2 + 0.5) ** 2 * 0.1
      cfg = {"model": {"blocks": "(gla, swiglu) * 2", "d_model": int(params ** 0.5)}, "optim": {"schedule": "cosine"},
             "data": {"name": "text", "batch_size": 4, "seq_len": 8}, "train": {"steps": 10}}
      d = root / f"c{budget:.0e}-p{params:.0e}"
      d.mkdir()
      (d / "config.json").write_text(json.dumps(cfg))
      (d / "metrics.jsonl").write_text(json.dumps({
        "step": 10, "loss": loss, "eval_loss": loss, "flops_per_step": budget / 10, "params": params,
        "eval_unigram_loss": unigram_loss, "eval_unigram_accuracy": 0.1}) + "\n")


def test_text_scaling_plots_draw_the_eval_sets_unigram_entropy(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  p = 1.0 / np.arange(1, 65) ** 1.1  # a Zipf-like byte distribution
  targets = rng.choice(64, size=(16, 32), p=p / p.sum())
  counts = np.bincount(targets.ravel(), minlength=64)
  freq = counts[counts > 0] / counts.sum()
  entropy = float(-(freq * np.log(freq)).sum())  # the eval targets' unigram entropy, computed here
  logged = baselines.unigram([{"targets": targets[:8], "weights": np.ones((8, 32))},
                              {"targets": targets[8:], "weights": np.ones((8, 32))}])["eval_unigram_loss"]
  _isoflop_text_runs(tmp_path, logged)

  figures = {}
  save = report.save_figure
  monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.setdefault(path.rsplit("/", 1)[-1], [
    (line.get_label(), line.get_ydata()) for ax in fig.axes for line in ax.get_lines()]) and save(fig, path))
  report.report(str(tmp_path), bootstrap=20)
  lines = [(label, y) for label, y in figures["isoflop.png"] if "unigram entropy" in label]
  assert len(lines) == 1, figures["isoflop.png"]
  assert np.allclose(lines[0][1], entropy, rtol=1e-6, atol=0)
  assert lines[0][0] == f"eval set's unigram entropy: {entropy:.3g}"
  assert entropy == pytest.approx(logged, rel=1e-6)


def test_no_unigram_line_when_text_runs_used_different_eval_sets(tmp_path, monkeypatch):
  _isoflop_text_runs(tmp_path, 3.0)
  (tmp_path / "c1e+12-p1e+05" / "metrics.jsonl").write_text(json.dumps({
    "step": 10, "loss": 2.5, "eval_loss": 2.5, "flops_per_step": 1e11, "params": 1e5, "eval_unigram_loss": 3.5,
    "eval_unigram_accuracy": 0.1}) + "\n")
  figures = {}
  save = report.save_figure
  monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.setdefault(path.rsplit("/", 1)[-1], [
    line.get_label() for ax in fig.axes for line in ax.get_lines()]) and save(fig, path))
  report.report(str(tmp_path), bootstrap=20)
  assert not any("unigram entropy" in label for label in figures["isoflop.png"])
