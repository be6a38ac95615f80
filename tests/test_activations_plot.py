"""The learned-activation plot: finds every learnable activation in a params pytree, reads a run dir."""

import jax
import numpy as np
from flax import nnx

import models
from experiments import activation_plots as plot
from train import checkpoint
from train import config as config_lib


def test_plot_activations_from_params(tmp_path):
  params = {
    "blocks": {"0": {"ffn": {"act": {"numerator": np.array([0.0, 1.0, 0, 0, 0, 0]), "denominator": np.zeros(4)}},
                     "attn": {"kernel": np.ones((4, 4))}},
               "1": {"ffn": {"act": {"numerator": np.ones((8, 6)), "denominator": np.zeros((8, 4))}}}},
    "poly": {"weight": np.full(3, 1 / 3), "bias": np.zeros(1)},
    "swish": {"beta": np.array([1.0])},
  }
  found = plot.find_activations(params)
  assert sorted(found) == ["blocks/0/ffn/act", "blocks/1/ffn/act", "poly", "swish"]
  kind, ys = plot.curves(found["blocks/1/ffn/act"], np.linspace(-1, 1, 5))
  assert kind == "group rational A (G=8)" and len(ys) == 8
  np.testing.assert_allclose(plot.curves(found["blocks/0/ffn/act"], np.linspace(-1, 1, 5))[1][0],
                             np.linspace(-1, 1, 5))  # identity
  out = tmp_path / "shapes.png"
  assert plot.plot_activations(params, params, path=out, polycom="polyrelu") == sorted(found)
  assert out.stat().st_size > 10_000


def test_velu_curve_is_the_layer_on_a_unit_rms_row():
  from layers import registry
  from layers.context import LayerContext

  opts = dict(alpha=2.0, beta1=1.0, beta2=0.7)
  act = registry.build("activation", "velu", LayerContext(d_model=401), rngs=nnx.Rngs(0), **opts)
  act.lam[...] = np.array([1.5], np.float32)
  x = np.linspace(-2.5, 2.5, 401)
  x = x / np.sqrt(np.mean(x**2))  # a row of RMS 1
  found = plot.find_activations({"mlp": {"act": {"lam": np.array([1.5])}}})
  kind, ys = plot.curves(found["mlp/act"], x, velu=opts)
  assert kind.startswith("velu")
  np.testing.assert_allclose(ys[0], np.asarray(act(x[None].astype(np.float32)))[0], rtol=1e-5, atol=1e-6)


def test_plot_run_reads_checkpoint_and_rebuilds_init(tmp_path):
  config = config_lib.load(f"{config_lib.PROJECT_ROOT / 'experiments/pau.py'}:local,act=pau_b")
  model = models.build(config.model, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  init_numerator = np.asarray(params["conv_acts"][0]["numerator"])
  params["conv_acts"][0]["numerator"] = params["conv_acts"][0]["numerator"] * 2.0  # "trained"
  config_lib.save(config, str(tmp_path))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), every=1, keep=1, async_save=False)
  ckpt.save(7, {"params": params, "step": jax.numpy.int32(7)}, {}, {}, force=True)
  ckpt.close()
  learned, init, cfg, step = plot.load_run(tmp_path)
  assert step == 7 and cfg["model"]["options"]["rational"]["version"] == "B"
  np.testing.assert_allclose(init["conv_acts"]["0"]["numerator"], init_numerator, rtol=1e-6)
  np.testing.assert_allclose(learned["conv_acts"]["0"]["numerator"], 2 * init_numerator, rtol=1e-6)
  out = plot.plot_run(tmp_path)
  assert out == tmp_path / "activations.png" and out.stat().st_size > 10_000
