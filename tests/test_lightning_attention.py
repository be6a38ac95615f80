"""TransNormerLLM / Lightning Attention-2 mixer: the decay schedule per head and layer, the layer against its
direct formula, the experiment's configs. Decoding, packing and causality: tests/test_mixers.py."""

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import lightning_attention as experiment
from layers.context import LayerContext
from layers.linear_attention.mixers.lightning_attention import LightningAttention, alibi_slopes, tnl_log_decay
from train import config as config_lib
from train import validate

B, T, H, K = 2, 21, 4, 8


def test_alibi_slopes_of_the_authors_code():
  np.testing.assert_allclose(alibi_slopes(8), [2.0**-i for i in range(1, 9)])
  np.testing.assert_allclose(alibi_slopes(4), [2.0**-i for i in (2, 4, 6, 8)])
  # 6 heads: the 4 slopes of 4 heads, then every other slope of 8 heads
  np.testing.assert_allclose(alibi_slopes(6), [2.0**-i for i in (2, 4, 6, 8, 1, 3)])
  np.testing.assert_allclose(alibi_slopes(1), [2.0**-8])


def test_decay_falls_with_depth():
  slopes = np.asarray(alibi_slopes(8))
  np.testing.assert_allclose(tnl_log_decay(8, 0, 4), -slopes * (1 + 1e-5), rtol=1e-6)
  np.testing.assert_allclose(tnl_log_decay(8, 2, 5), -slopes * (0.5 + 1e-5), rtol=1e-6)
  np.testing.assert_allclose(tnl_log_decay(8, 3, 4), -slopes * 1e-5, rtol=1e-5)  # the last layer barely decays
  np.testing.assert_allclose(tnl_log_decay(8, 0, 1), -slopes * (1 + 1e-5), rtol=1e-6)  # one layer: no 0 / 0
  assert np.all(tnl_log_decay(8, 1, 4) < 0)


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_layer_matches_the_direct_formula(mode):
  """y = (SRMSNorm(sum_{s<=t} lambda_h^(t-s) (q_t . k_s) v_s) * x W_u) W_o, q, k = silu(x W), no scale."""
  ctx = LayerContext(d_model=32, n_heads=H, head_dim=K, layer_idx=1, n_layers=3)
  layer = LightningAttention(ctx, mode=mode, chunk_size=8, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (B, T, 32))
  x64 = np.asarray(x, np.float64)

  def proj(name):
    return np.einsum("btd,de->bte", x64, np.asarray(getattr(layer, name).kernel[...], np.float64))

  silu = lambda z: z / (1 + np.exp(-z))  # noqa: E731
  q, k = (silu(proj(n)).reshape(B, T, H, K) for n in ("q_proj", "k_proj"))
  v = proj("v_proj").reshape(B, T, H, K)
  lam = np.exp(np.asarray(alibi_slopes(H)) * -(0.5 + 1e-5))  # layer 1 of 3
  gap = np.arange(T)[:, None] - np.arange(T)[None, :]
  decay = np.where(gap >= 0, lam[:, None, None] ** np.maximum(gap, 0), 0.0)  # [H, T, S]
  o = np.einsum("bhts,bshv->bthv", np.einsum("bthk,bshk->bhts", q, k) * decay, v).reshape(B, T, H * K)
  o = o / np.sqrt(np.mean(o**2, axis=-1, keepdims=True) + 1e-6) * proj("u_proj")
  want = o @ np.asarray(layer.o_proj.kernel[...], np.float64)
  got = np.asarray(layer(x), np.float64)
  assert np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)) < 1e-5


def test_experiment_variants_validate():
  for variant in experiment.VARIANTS:
    for local in ("local,", ""):
      validate.validate(config_lib.load(f"experiments/lightning_attention.py:{local}variant={variant}"), num_devices=1)
  c = experiment.get_config(None)
  assert (c.model.d_model, c.model.n_heads, c.data.seq_len) == (1024, 8, 2048)
  with pytest.raises(ValueError, match="variant"):
    experiment.get_config("variant=mamba")
