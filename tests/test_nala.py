"""NaLa (norm-aware linear attention): its feature maps, the layer causal and bidirectional against the direct
formula (packed documents included), gradients at exact zeros, the LM refusing the bidirectional form, the
experiment's configs. Decoding and packing of the causal form: tests/test_mixers.py; the ViT: tests/test_vit.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import nalaformer
from layers import registry
from layers.context import LayerContext
from layers.linear_attention.mixers.nala import NaLaAttention, nala_key_features, nala_query_features
from models.lm import check
from tests.foundation_configs import tiny_lm
from train import config as config_lib
from train import validate

B, T, H, K, D = 2, 19, 2, 8, 16
CTX = LayerContext(d_model=D, n_heads=H, head_dim=K)
SEGMENT_IDS = np.array([[4] * 7 + [9] * 12, [1] * 3 + [2] * 9 + [3] * 7], np.int32)


def _split_power(x, p):
  return np.concatenate([np.maximum(x, 0) ** p, np.maximum(-x, 0) ** p], axis=-1)


def test_feature_maps_match_their_definition():
  q = np.asarray(jax.random.normal(jax.random.key(0), (B, T, H, K)), np.float64) * 2
  norm = np.linalg.norm(q, axis=-1, keepdims=True)
  want = _split_power(q / norm, 3 * (0.5 + np.tanh(norm)))
  np.testing.assert_allclose(nala_query_features(jnp.asarray(q, jnp.float32)), want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(nala_key_features(jnp.asarray(q, jnp.float32)), _split_power(q, 3), rtol=1e-5)
  # A larger query norm concentrates the (normalised) weight on the largest direction entry.
  d = jnp.array([0.8, 0.6, 0.0, 0.0])
  small, large = (nala_query_features(s * d) for s in (0.1, 10.0))
  assert float(small[0] / small.sum()) < float(large[0] / large.sum())
  # The [+, -] split keeps the direction's norm at power 1.
  np.testing.assert_allclose(np.linalg.norm(nala_key_features(jnp.asarray(q[0, 0]), 1.0), axis=-1),
                             np.linalg.norm(q[0, 0], axis=-1), rtol=1e-5)


def test_gradients_are_finite_at_exact_zeros():
  q = jnp.array([[0.0, 1.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  for f in (nala_query_features, nala_key_features):
    g = jax.grad(lambda z, f=f: jnp.sum(f(z) * jnp.arange(8.0)))(q)
    assert bool(jnp.all(jnp.isfinite(g))), f.__name__
  assert bool(jnp.all(nala_query_features(q)[1] == 0))


def reference(layer: NaLaAttention, x, causal: bool, segment_ids=None) -> np.ndarray:
  """o_t = sum_s w_ts v_s / (sum_s w_ts + 1e-6), w_ts = phi_q(q_t) . phi_k(k_s) over s <= t (causal) or all
  s, within t's document; y = (LayerNorm(o) * silu(x W_g)) W_o (biases everywhere)."""
  x64 = np.asarray(x, np.float64)

  def proj(name):
    p = getattr(layer, name)
    return np.einsum("btd,de->bte", x64, np.asarray(p.kernel[...], np.float64)) + np.asarray(p.bias[...], np.float64)

  q, k, v = (proj(n).reshape(B, T, H, K) for n in ("q_proj", "k_proj", "v_proj"))
  norm = np.linalg.norm(q, axis=-1, keepdims=True)
  fq, fk = _split_power(q / norm, 3 * (0.5 + np.tanh(norm))), _split_power(k, 3)
  w = np.einsum("bthf,bshf->bhts", fq, fk)
  seg = np.zeros((B, T), np.int32) if segment_ids is None else segment_ids
  mask = seg[:, None, :, None] == seg[:, None, None, :]
  if causal:
    mask = mask & np.tril(np.ones((T, T), bool))
  w = w * mask
  o = (np.einsum("bhts,bshv->bthv", w, v) / (w.sum(-1).transpose(0, 2, 1)[..., None] + 1e-6)).reshape(B, T, H * K)
  mean, var = o.mean(-1, keepdims=True), o.var(-1, keepdims=True)
  o = (o - mean) / np.sqrt(var + 1e-5) * np.asarray(layer.norm.scale[...]) + np.asarray(layer.norm.bias[...])
  g = proj("g_proj")
  out = layer.o_proj
  return (o * g / (1 + np.exp(-g))) @ np.asarray(out.kernel[...], np.float64) + np.asarray(out.bias[...], np.float64)


@pytest.mark.parametrize("causal,mode,packed", [(True, "chunk", False), (True, "recurrent", True),
                                                (False, "chunk", False), (False, "chunk", True)])
def test_layer_matches_the_direct_formula(causal, mode, packed):
  layer = NaLaAttention(CTX, causal=causal, mode=mode, chunk_size=8, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (B, T, D))
  seg = SEGMENT_IDS if packed else None
  got = np.asarray(layer(x, segment_ids=None if seg is None else jnp.asarray(seg)), np.float64)
  want = reference(layer, x, causal, seg)
  assert np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)) < 1e-4


def test_bidirectional_form_cannot_decode_and_the_lm_refuses_it():
  layer = NaLaAttention(CTX, causal=False, rngs=nnx.Rngs(0))
  x = jnp.ones((1, 1, D))
  with pytest.raises(NotImplementedError, match="causal=True"):
    layer.decode(x, layer.init_cache(1, 4), jnp.int32(0))
  cfg = tiny_lm().model
  cfg.update(dict(blocks="(enc, mlp)"))
  cfg.options.enc = dict(layer="nala", causal=False)
  with pytest.raises(ValueError, match="bidirectional"):
    check(cfg)
  with pytest.raises(ValueError, match="Did you mean"):  # options of a class-registered layer are checked
    registry.check_options("mixer", "nala", {"causl": False})


def test_experiment_configs_validate():
  for spec in ("local", "local,attention=softmax", "model=deit_t", "model=deit_s,attention=softmax"):
    validate.validate(config_lib.load(f"experiments/nalaformer.py:{spec}"), num_devices=1)
  assert "nala" in nalaformer.get_config("local").model.blocks
  with pytest.raises(ValueError, match="attention must be one of"):
    nalaformer.get_config("attention=performer")
