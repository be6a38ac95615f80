"""The linear-attention experiment files: every variant builds a config the training loop accepts."""

import pytest

from experiments import delta_net, gated_delta_net, gla, hybrid, mqar_study
from models.block_pattern import parse
from train import config as config_lib
from train import validate

SPECS = (
  [f"experiments/gla.py:{size}mixer={m}" for m in gla.MIXERS for size in ("local,", "", "size=1.3b,")]
  + [f"experiments/delta_net.py:{size}variant={v}" for v in delta_net.VARIANTS for size in ("local,", "size=1.3b,")]
  + [f"experiments/gated_delta_net.py:{size}variant={v}" for v in gated_delta_net.VARIANTS
     for size in ("local,", "size=1.3b,")]
  + [f"experiments/hybrid.py:local,task=mqar,ratio={r}" for r in (0, 1, 3)]
  + [f"experiments/hybrid.py:ratio={r}" for r in (0, 3, 6)]
  + [f"experiments/mqar_study.py:local,mixer={m},width=32,pairs=8" for m in mqar_study.MIXERS]
  + [f"experiments/mqar_study.py:mixer={m},width=512,pairs=128" for m in mqar_study.MIXERS]
)


def test_every_variant_validates(spm_model):
  for spec in SPECS:
    config = config_lib.load(spec)
    if config.data.name == "tfds_text":  # paper scale: the corpus tokenizer the user points to
      config_lib.override(config, "data.spm_model", spm_model)
    validate.validate(config, num_devices=1)


def test_hybrid_patterns_place_attention_as_described():
  mixers = [m for m, _ in parse(hybrid.pattern("gated_delta_net", 3, 24))]
  assert len(mixers) == 24 and mixers.count("attention") == 6 and mixers[3::4] == ["attention"] * 6
  mixers = [m for m, _ in parse(hybrid.pattern("gla", 6, 24))]
  assert len(mixers) == 24 and mixers.count("attention") == 3 and mixers[-1] == "attention"
  assert "attention" not in hybrid.pattern("gla", 0, 24)
  with pytest.raises(ValueError, match="needs at least"):
    hybrid.pattern("gla", 6, 4)
  mixers = [m for m, _ in parse(delta_net.pattern("global_hybrid", 24))]
  assert [i for i, m in enumerate(mixers) if m == "attention"] == [1, 12]


def test_paper_shapes():
  c = gla.get_config("size=340m")
  assert (c.model.d_model, c.model.n_heads, len(parse(c.model.blocks))) == (1024, 4, 24)
  c = gated_delta_net.get_config("size=340m")
  assert (c.model.d_model, c.model.n_heads, c.model.head_dim, len(parse(c.model.blocks))) == (1024, 6, 256, 21)
  c = gated_delta_net.get_config("local")
  assert c.model.head_dim == 0 and c.model.d_model == 64  # local runs drop the paper's head shape


def _mqar_run(mixer, width, lr, seed, accs):
  config = {"model.blocks": f"({mixer}, swiglu) * 2", "model.d_model": width, "data.num_pairs": 8, "optim.lr": lr,
            "seed": seed}
  records = [{"step": 10 * (i + 1), "loss": 1.0, "accuracy": a, "eval_accuracy": a, "eval_accuracy_se": 0.01,
              "eval_unigram_accuracy": 0.07} for i, a in enumerate(accs)]
  return {"run": f"{mixer}-{lr}-{seed}", "config": config, "records": records}


def test_mqar_study_reports_the_best_lr_per_cell_over_seeds():
  runs = [_mqar_run("gla", 32, 1e-3, s, [0.2, a]) for s, a in ((0, 0.5), (1, 0.7))]
  runs += [_mqar_run("gla", 32, 3e-3, s, [0.3, a]) for s, a in ((0, 0.9), (1, 0.8))]
  runs += [_mqar_run("attention_kv_shift", 64, 1e-3, 0, [0.4, 1.0])]
  cells = mqar_study.best(mqar_study.study_rows(runs))
  gla = next(c for c in cells if c["mixer"] == "gla")
  assert (gla["lr"], gla["n"]) == (3e-3, 2) and gla["mean"] == pytest.approx(0.85)
  assert gla["std"] == pytest.approx(0.0707, abs=1e-4) and gla["curve"][0] == (10, pytest.approx(0.3))
  lines = mqar_study.table(cells, (32, 64), (8,)).splitlines()
  assert lines[2] == "gla | 8 | 0.850 ± 0.071 (SE 0.0100, lr 3e-03, n=2) | -"
  assert lines[3] == "attention_kv_shift | 8 | - | 1.000 ± 0.000 (SE 0.0100, lr 1e-03, n=1)"


def test_mqar_study_steps_scale_warmup_and_eval_cadence():
  c = mqar_study.get_config("local,mixer=gla,width=32,pairs=8,steps=1000")
  assert (c.train.steps, c.optim.warmup_steps, c.train.eval_every, c.train.ckpt_every) == (1000, 100, 100, 1000)
  assert mqar_study.get_config("local,mixer=gla").train.steps == mqar_study.SCALES["local"]["steps"]
  with pytest.raises(ValueError, match="multiple of 200"):
    mqar_study.get_config("local,mixer=gla,steps=500")


def test_mqar_study_grid_selects_a_subset_and_runs_seeds_by_default():
  full = mqar_study.grid("local")
  assert full["seeds"] == (0, 1) and "attention_kv_shift" in full["mixers"]
  part = mqar_study.grid("local,grid_mixers=attention+gla,grid_lrs=3e-3,grid_seeds=0")
  assert part["mixers"] == ("attention", "gla") and part["lrs"] == (3e-3,) and part["seeds"] == (0,)
  with pytest.raises(ValueError, match=r"grid_mixers has.*known mixers"):
    mqar_study.grid("local,grid_mixers=attn")


def test_quickstart_grids_validate_with_seeds_and_a_large_fixed_eval_set():
  from train import sweep

  for task, n_runs in (("text", 6), ("mqar", 3)):
    spec = f"experiments/quickstart.py:{task}"
    runs = sweep.expand(spec)
    assert len(runs) == n_runs
    for run in runs:
      c = sweep.resolve(spec, run.overrides)
      validate.validate(c, num_devices=1)
      assert c.train.eval_every % c.train.log_every == 0  # evals happen only on logged steps
  assert {r.overrides["seed"] for r in sweep.expand("experiments/quickstart.py:text")} == {0, 1}
  c = sweep.resolve("experiments/quickstart.py:mqar", {})
  assert c.train.eval_steps * c.data.batch_size == c.data.eval_examples == 1024
