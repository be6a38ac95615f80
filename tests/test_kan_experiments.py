"""KAN-family experiment configs validate and build (full-scale ViT recipes with DeiT's augmentations); the
function-fitting source is fixed and correct; the KAN scaling study's runs validate and its reader turns
metrics into RMSE vs parameters."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

import models
from experiments import kan, karat, kat
from train import config as config_lib
from train import sweep
from train.data import augment, function_fit, registry
from train.validate import validate


@pytest.mark.parametrize("module,arg", [
  (kan, "local"), (kan, "local,layer=linear,width=8,function=composition4"), (kat, "local"),
  (kat, "local,model=deit_t,data=digits"), (kat, "model=kat_b"), (karat, "local,attention=karat_universal"),
  (karat, "attention=karat,data=cifar100"),
])
def test_configs_validate_and_build(module, arg):
  config = module.get_config(arg)
  config.lock()
  validate(config, num_devices=1, process_count=1)
  model = nnx.eval_shape(lambda: models.build(config.model, rngs=nnx.Rngs(0)))
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param))) > 0


@pytest.mark.parametrize("module,arg,classes,crop,padding,side", [
  (kat, "model=kat_s", 1000, 224, 0, 224), (kat, "model=deit_t", 1000, 224, 0, 224),
  (karat, "attention=karat", 10, 0, 4, 32), (karat, "attention=softmax,data=cifar100", 100, 0, 4, 32),
])
def test_full_scale_vit_recipes_use_deit_augmentations(module, arg, classes, crop, padding, side):
  """ImageNet / CIFAR configs: mixup 0.8, cutmix 1.0, label smoothing 0.1, flips, random-resized crop
  (ImageNet, from images of any size) or padded random crop (CIFAR), soft targets over the model's
  classes; the pipeline's transforms build from them and apply."""
  config = module.get_config(arg)
  config.lock()
  validate(config, num_devices=1, process_count=1)
  aug = config.data.augment
  assert (aug.mixup_alpha, aug.cutmix_alpha, aug.flip, aug.erase_prob) == (0.8, 1.0, True, 0.25)
  assert (aug.random_resized_crop, aug.crop_padding, config.data.image_size) == (crop, padding, crop)
  assert aug.num_classes == config.model.n_classes == classes and config.train.label_smoothing == 0.1
  rng = np.random.default_rng(0)
  stored = (300, 450) if crop else (side, side)  # ImageNet images come in any size
  example = augment.example_transform(aug)({"inputs": rng.normal(size=(*stored, 3)).astype(np.float32)}, rng)
  images = rng.normal(size=(4, side, side, 3)).astype(np.float32)
  batch = augment.batch_transform(aug)({"inputs": images, "targets": np.arange(4) % classes}, rng)
  assert example["inputs"].shape == (side, side, 3) and batch["targets"].shape == (4, classes)
  np.testing.assert_allclose(batch["targets"].sum(-1), 1.0, rtol=1e-6)
  local = module.get_config("local").data.augment  # CPU variants stay unaugmented
  assert augment.example_transform(local) is None and augment.batch_transform(local) is None


def test_function_fit_source():
  cfg = kan.get_config("local,function=exp_sin").data
  train = registry.lookup("function_fit")(cfg, split="train", seed=0)
  test = registry.lookup("function_fit")(cfg, split="test", seed=5)
  assert len(train) == 1000 and len(test) == 1000
  ex = train[3]
  assert ex["inputs"].shape == (2,) and ex["targets"].shape == (1,)
  x, y = ex["inputs"], ex["targets"][0]
  np.testing.assert_allclose(y, np.exp(np.sin(np.pi * x[0]) + x[1] ** 2), rtol=1e-5)
  assert not np.allclose(train[0]["inputs"], test[0]["inputs"])
  again = registry.lookup("function_fit")(cfg, split="train", seed=9)
  np.testing.assert_array_equal(train[3]["inputs"], again[3]["inputs"])  # fixed set, whatever the seed
  xb, yb = function_fit.function_arrays("bessel", 8, 0)
  assert xb.shape == (8, 1) and np.all(np.abs(yb) <= 1.0)


def test_scaling_study_sweep_validates_and_reads_rmse_vs_params(tmp_path):
  """The study's runs (two seeds) all validate; its reader takes the KAN's last eval per grid (parameter
  count) and each MLP's final eval, fits the exponents per seed and reports their mean and spread."""
  runs = sweep.expand("experiments/kan.py:local", str(tmp_path))
  assert [(r.overrides["model.layer"], r.overrides["seed"]) for r in runs] == [
    (layer, seed) for seed in (0, 1) for layer in ("kan", "linear", "linear", "linear")]
  for r in runs:
    validate(sweep.resolve("experiments/kan.py:local", r.overrides), num_devices=1, process_count=1)
  assert kan.get_config("local").train.kan_grid.extend == ((300, 5), (600, 10))

  def write(name, config, records):
    config_lib.save(config, str(tmp_path / name))
    (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

  for seed, (a_kan, a_mlp) in enumerate(((3.0, 0.5), (4.0, 1.0))):
    rmse = {p: 1e-1 * (p / 21) ** -a_kan for p in (21, 27, 42)}  # KAN: RMSE ~ params^-a_kan
    config = kan.get_config("local")
    config.seed = seed
    write(f"kan{seed}", config, [
      {"step": 150, "loss": 1.0, "params": 21, "eval_loss": 1.0},  # superseded by the eval at 300
      {"step": 300, "loss": 1.0, "params": 21, "eval_loss": rmse[21] ** 2},
      {"step": 400, "loss": 1.0, "params": 27},
      {"step": 600, "loss": 1.0, "params": 27, "eval_loss": rmse[27] ** 2},
      {"step": 900, "loss": 1.0, "params": 42, "eval_loss": rmse[42] ** 2}])
    for width, params in ((4, 37), (8, 105), (16, 337)):
      config = kan.get_config(f"local,layer=linear,width={width}")
      config.seed = seed
      write(f"mlp{width}_{seed}", config,
            [{"step": 900, "loss": 1.0, "params": params, "eval_loss": (params / 37.0) ** (-2 * a_mlp)}])
  results = kan.study(str(tmp_path))
  first, second = results["seeds"]
  assert [r["params"] for r in first["kan"]] == [21, 27, 42] and len(first["mlp"]) == 3
  assert [r["test_rmse"] for r in first["kan"]] == pytest.approx([1e-1 * (p / 21) ** -3.0 for p in (21, 27, 42)])
  assert (first["alpha_kan"], first["alpha_mlp"], second["alpha_kan"], second["alpha_mlp"]) == pytest.approx(
    (3.0, 0.5, 4.0, 1.0))
  assert (results["alpha_kan"], results["alpha_mlp"]) == pytest.approx((3.5, 0.75))
  assert (results["alpha_kan_std"], results["alpha_mlp_std"]) == pytest.approx((0.5**0.5, 0.125**0.5))
  assert (tmp_path / "rmse_vs_params.png").exists() and (tmp_path / "rmse_vs_params.json").exists()
