"""ViT / DeiT / KAT model and the small MLP / KAN / conv nets: shapes, presets, patches, grads, grids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from models.mlp import convnet_model_config, mlp_model_config
from models.vit import patchify, vit_model_config


def n_params(module) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(module, nnx.Param))))


def small_vit(attention: str, ffn: str, *, image_size=(8, 8), pool="cls", n_layers=2):
  cfg = vit_model_config("deit_t", image_size=image_size, in_channels=1, patch_size=2, n_classes=5,
                         attention=attention)
  cfg.update(dict(d_model=32, n_heads=2, d_ff=64, pool=pool, blocks=f"({attention}, {ffn}) * {n_layers}"))
  return cfg


@pytest.mark.parametrize("preset,millions", [("deit_t", 5.7), ("deit_s", 22.1), ("deit_b", 86.6), ("kat_t", 5.7)])
def test_preset_sizes(preset, millions):
  model = nnx.eval_shape(lambda: models.build(vit_model_config(preset), rngs=nnx.Rngs(0)))
  assert abs(n_params(model) / 1e6 - millions) / millions < 0.02


def test_patchify_2d_and_1d():
  x = jnp.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)
  p = patchify(x, 2)
  assert p.shape == (2, 6, 12)
  np.testing.assert_array_equal(p[1, 4], x[1, 2:4, 2:4].reshape(-1))  # patch (row 1, col 1)
  s = jnp.arange(2 * 12 * 1).reshape(2, 12, 1)
  np.testing.assert_array_equal(patchify(s, 4)[0, 2], s[0, 8:12, 0])


@pytest.mark.parametrize("attention,ffn,image_size,pool", [
  ("softmax", "mlp", (8, 8), "cls"),
  ("karat_universal", "gr_kan", (12,), "mean"),
  ("nala", "mlp", (8, 8), "mean"),
])
def test_vit_forward_and_grads(attention, ffn, image_size, pool):
  cfg = small_vit(attention, ffn, image_size=image_size, pool=pool, n_layers=1)
  model = models.build(cfg, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (3, *image_size, 1))
  labels = jnp.array([0, 1, 4])

  @nnx.jit
  def loss_and_grads(model, x):
    def loss(model):
      logits = model(x)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)), logits
    return nnx.value_and_grad(loss, has_aux=True)(model)

  (loss, logits), grads = loss_and_grads(model, x)
  assert logits.shape == (3, 5) and logits.dtype == jnp.float32
  np.testing.assert_allclose(loss, np.log(5), rtol=1e-5)  # zero-init head
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert float(jnp.abs(grads.embed.kernel[...]).sum()) == 0.0  # head is zero: no signal below it yet
  assert float(jnp.abs(grads.head.kernel[...]).sum()) > 0


def test_universal_karat_shares_one_operator():
  uni = models.build(small_vit("karat_universal", "mlp", n_layers=3), rngs=nnx.Rngs(0))
  block = models.build(small_vit("karat", "mlp", n_layers=3), rngs=nnx.Rngs(0))
  ops = [b.mixer.operator for b in uni.blocks]
  assert ops[0] is ops[1] is ops[2]
  per_op = n_params(ops[0])
  assert n_params(block) - n_params(uni) == 2 * per_op


def test_mlp_and_kan_nets():
  x = jax.random.uniform(jax.random.key(1), (64, 2), minval=-1, maxval=1)
  mlp = models.build(mlp_model_config((16,), activation="silu", n_outputs=1, in_features=2), rngs=nnx.Rngs(0))
  assert mlp(x).shape == (64, 1)
  kan = models.build(mlp_model_config((2,), layer="kan", n_outputs=1, in_features=2), rngs=nnx.Rngs(0))
  before = kan(x)
  kan.update_grid(x, grid_size=10)  # grid extension, layer by layer
  assert kan.layers[0].grid_size == kan.layers[1].grid_size == 10
  assert float(jnp.sqrt(jnp.mean((kan(x) - before) ** 2)) / jnp.sqrt(jnp.mean(before**2))) < 2e-2
  fkan = models.build(mlp_model_config((4,), layer="fourier_kan", n_outputs=3, in_features=2), rngs=nnx.Rngs(0))
  assert fkan(x).shape == (64, 3)


@pytest.mark.parametrize("spatial", [(40,), (8, 8)])
def test_convnet(spatial):
  cfg = convnet_model_config(activation="gelu", spatial=spatial, n_outputs=10)
  model = models.build(cfg, rngs=nnx.Rngs(0))
  assert model(jnp.ones((2, *spatial, 1))).shape == (2, 10)
